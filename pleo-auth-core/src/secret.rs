//! Newtypes for secret values: redacted `Debug`, no `Display`, zeroized on drop.
//!
//! Each type has one accessor, `expose_secret()`, so every place that reads a secret is easy to
//! find. No secret type implements `Serialize` or `Deserialize`: a stored record writes and reads
//! its secret fields through [`expose_for_storage`], the one named path to a serializer.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use zeroize::Zeroizing;

macro_rules! secret_string {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name(Zeroizing<String>);

        impl $name {
            /// Wraps a secret value.
            pub fn new(value: impl Into<String>) -> Self {
                Self(Zeroizing::new(value.into()))
            }

            /// The secret value. Every call site is a place where the secret leaves its wrapper.
            pub fn expose_secret(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "([redacted])"))
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> Self {
                Self::new(value)
            }
        }
    };
}

/// The one path by which a secret reaches a serializer: serde helpers for the secret fields of
/// a stored [`Record`](crate::Record), used as `#[serde(with = "expose_for_storage")]` (or
/// `expose_for_storage::option` on an `Option`). The secret is written as a plain string, so
/// records stay byte-compatible with what the stores already hold. Only the types a stored
/// record holds ([`StoredSecret`](expose_for_storage::StoredSecret)) can be written this way.
///
/// ```
/// use pleo_auth_core::{AccessToken, expose_for_storage};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Stored {
///     #[serde(with = "expose_for_storage")]
///     token: AccessToken,
///     #[serde(default, with = "expose_for_storage::option")]
///     previous: Option<AccessToken>,
/// }
///
/// let json = serde_json::to_string(&Stored { token: AccessToken::new("t"), previous: None }).unwrap();
/// assert_eq!(json, r#"{"token":"t","previous":null}"#);
/// let back: Stored = serde_json::from_str(&json).unwrap();
/// assert_eq!(back.token.expose_secret(), "t");
/// ```
pub mod expose_for_storage {
    use serde::{Deserialize, Deserializer, Serializer};

    mod sealed {
        pub trait Sealed {}
    }

    /// A secret type that a stored record may hold. Sealed: the set is fixed here.
    pub trait StoredSecret: sealed::Sealed + Sized {
        /// The secret value, for the serializer.
        fn expose_for_storage(&self) -> &str;
        /// The secret read back from storage.
        fn from_storage(value: String) -> Self;
    }

    macro_rules! stored {
        ($($name:ident),*) => {$(
            impl sealed::Sealed for super::$name {}
            impl StoredSecret for super::$name {
                fn expose_for_storage(&self) -> &str {
                    self.expose_secret()
                }
                fn from_storage(value: String) -> Self {
                    Self::new(value)
                }
            }
        )*};
    }
    stored!(AccessToken, RefreshToken, ApiKey, PkceVerifier);

    /// Writes `secret` as a string.
    pub fn serialize<T: StoredSecret, S: Serializer>(
        secret: &T,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(secret.expose_for_storage())
    }

    /// Reads a secret written by [`serialize`].
    pub fn deserialize<'de, T: StoredSecret, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<T, D::Error> {
        String::deserialize(deserializer).map(T::from_storage)
    }

    /// The same for an optional secret (`null` when absent).
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};

        use super::StoredSecret;

        /// Writes `secret` as a string, or `null`.
        pub fn serialize<T: StoredSecret, S: Serializer>(
            secret: &Option<T>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match secret {
                Some(secret) => serializer.serialize_some(secret.expose_for_storage()),
                None => serializer.serialize_none(),
            }
        }

        /// Reads an optional secret written by [`serialize`].
        pub fn deserialize<'de, T: StoredSecret, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<T>, D::Error> {
            Ok(Option::<String>::deserialize(deserializer)?.map(T::from_storage))
        }
    }
}

secret_string!(
    /// An OAuth access token, sent as `Authorization: Bearer <token>`. Opaque: never parsed.
    AccessToken
);
secret_string!(
    /// An OAuth refresh token. Pleo rotates it on every use and revokes the grant if an old one
    /// is presented again.
    RefreshToken
);
secret_string!(
    /// A Pleo API key (Integrated or Standalone), sent as `Authorization: Basic base64(key + ":")`.
    ApiKey
);
secret_string!(
    /// A PKCE code verifier (RFC 7636), kept server-side until the code exchange.
    PkceVerifier
);
secret_string!(
    /// The OAuth client secret. Used only to authenticate at the token endpoint, never as an API
    /// credential.
    ClientSecret
);
secret_string!(
    /// A one-time authorization code from the OAuth callback.
    AuthorizationCode
);
secret_string!(
    /// A complete `Authorization` header value (`Bearer ...` or `Basic ...`).
    AuthorizationHeader
);
secret_string!(
    /// A random value held by the browser that started an authorization (in an `HttpOnly`
    /// cookie). The pending authorization keeps only a digest of it, and the callback is
    /// completed only in a browser that presents the same value.
    BrowserBinding
);

/// Bytes of randomness in a [`BrowserBinding`] (256 bits).
const BROWSER_BINDING_BYTES: usize = 32;

impl BrowserBinding {
    /// A new random binding (256 bits from the operating system, base64url).
    pub fn generate() -> Self {
        Self::new(random_urlsafe(BROWSER_BINDING_BYTES))
    }

    /// Whether `value` looks like a binding this crate generates (43 base64url characters),
    /// so a cookie of another shape is never used.
    pub fn is_well_formed(value: &str) -> bool {
        value.len() == 43
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }
}

impl AuthorizationHeader {
    /// `Bearer <access token>`.
    pub fn bearer(token: &AccessToken) -> Self {
        let mut value = String::with_capacity(7 + token.expose_secret().len());
        value.push_str("Bearer ");
        value.push_str(token.expose_secret());
        Self::new(value)
    }

    /// `Basic base64(<api key> + ":")`: the key as user name, an empty password.
    pub fn basic_api_key(key: &ApiKey) -> Self {
        let mut plain = Zeroizing::new(String::with_capacity(key.expose_secret().len() + 1));
        plain.push_str(key.expose_secret());
        plain.push(':');
        let mut value = String::from("Basic ");
        STANDARD.encode_string(plain.as_bytes(), &mut value);
        Self::new(value)
    }
}

/// Secret bytes: a stored value as the [`SecretStore`](crate::SecretStore) sees it.
#[derive(Clone, Default)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Wraps bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The bytes.
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }

    /// The number of bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for SecretBytes {
    fn from(value: Vec<u8>) -> Self {
        Self::new(value)
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes([redacted; {} bytes])", self.0.len())
    }
}

/// `n` bytes from the operating system's CSPRNG, base64url-encoded without padding.
///
/// Used for OAuth `state`, PKCE verifiers and lease tokens.
pub fn random_urlsafe(n: usize) -> String {
    let mut buf = Zeroizing::new(vec![0u8; n]);
    getrandom::getrandom(&mut buf).expect("the operating system's random source is available");
    URL_SAFE_NO_PAD.encode(&*buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails to compile if `$ty` implements `$trait` (the check `static_assertions` makes with
    /// `assert_not_impl_any!`): with the second impl, `Ambiguous::<_>::check` has two
    /// candidates and the type cannot be inferred.
    macro_rules! assert_not_impl {
        ($trait:path: $($ty:ty),+) => {{
            trait Ambiguous<A> {
                fn check() {}
            }
            impl<T: ?Sized> Ambiguous<()> for T {}
            #[allow(dead_code)]
            struct Implements;
            impl<T: ?Sized + $trait> Ambiguous<Implements> for T {}
            $(<$ty as Ambiguous<_>>::check();)+
        }};
    }

    #[test]
    fn no_secret_type_is_serialize_or_deserialize() {
        assert_not_impl!(serde::Serialize: AccessToken, RefreshToken, ApiKey, PkceVerifier,
            ClientSecret, AuthorizationCode, AuthorizationHeader, BrowserBinding, SecretBytes);
        assert_not_impl!(serde::de::DeserializeOwned: AccessToken, RefreshToken, ApiKey,
            PkceVerifier, ClientSecret, AuthorizationCode, AuthorizationHeader, BrowserBinding,
            SecretBytes);
    }

    #[test]
    fn stored_secrets_round_trip_as_plain_strings() {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Stored {
            #[serde(with = "expose_for_storage")]
            key: ApiKey,
            #[serde(default, with = "expose_for_storage::option")]
            refresh: Option<RefreshToken>,
        }
        let json = serde_json::to_string(&Stored {
            key: ApiKey::new("CANARY-k"),
            refresh: Some(RefreshToken::new("CANARY-r")),
        })
        .unwrap();
        assert_eq!(json, r#"{"key":"CANARY-k","refresh":"CANARY-r"}"#);
        let back: Stored = serde_json::from_str(r#"{"key":"CANARY-k"}"#).unwrap();
        assert_eq!(back.key.expose_secret(), "CANARY-k");
        assert!(back.refresh.is_none());
    }

    #[test]
    fn browser_bindings_are_random_and_well_formed() {
        let (a, b) = (BrowserBinding::generate(), BrowserBinding::generate());
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert!(BrowserBinding::is_well_formed(a.expose_secret()));
        assert!(!BrowserBinding::is_well_formed("short"));
        assert!(!BrowserBinding::is_well_formed(&format!(
            "{}!",
            &a.expose_secret()[1..]
        )));
        assert_eq!(format!("{a:?}"), "BrowserBinding([redacted])");
    }

    #[test]
    fn debug_is_redacted_exactly() {
        assert_eq!(
            format!("{:?}", AccessToken::new("CANARY-a")),
            "AccessToken([redacted])"
        );
        assert_eq!(
            format!("{:?}", RefreshToken::new("CANARY-b")),
            "RefreshToken([redacted])"
        );
        assert_eq!(
            format!("{:?}", ApiKey::new("CANARY-c")),
            "ApiKey([redacted])"
        );
        assert_eq!(
            format!("{:?}", PkceVerifier::new("CANARY-d")),
            "PkceVerifier([redacted])"
        );
        assert_eq!(
            format!("{:?}", ClientSecret::new("CANARY-e")),
            "ClientSecret([redacted])"
        );
        assert_eq!(
            format!("{:?}", AuthorizationCode::new("CANARY-f")),
            "AuthorizationCode([redacted])"
        );
        assert_eq!(
            format!("{:#?}", AuthorizationHeader::new("Bearer CANARY-g")),
            "AuthorizationHeader([redacted])"
        );
        assert_eq!(
            format!("{:?}", SecretBytes::new(b"CANARY-h".to_vec())),
            "SecretBytes([redacted; 8 bytes])"
        );
    }

    #[test]
    fn stored_secrets_serialize_as_plain_strings() {
        let token = RefreshToken::new("rt-1");
        let mut json = Vec::new();
        expose_for_storage::serialize(&token, &mut serde_json::Serializer::new(&mut json)).unwrap();
        assert_eq!(json, b"\"rt-1\"");
        let back: RefreshToken =
            expose_for_storage::deserialize(&mut serde_json::Deserializer::from_slice(&json))
                .unwrap();
        assert_eq!(back.expose_secret(), "rt-1");
    }

    #[test]
    fn authorization_headers() {
        let bearer = AuthorizationHeader::bearer(&AccessToken::new("abc"));
        assert_eq!(bearer.expose_secret(), "Bearer abc");
        // base64("key-1:") == "a2V5LTE6"
        let basic = AuthorizationHeader::basic_api_key(&ApiKey::new("key-1"));
        assert_eq!(basic.expose_secret(), "Basic a2V5LTE6");
    }

    #[test]
    fn random_values_are_distinct_and_url_safe() {
        let a = random_urlsafe(32);
        let b = random_urlsafe(32);
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
    }
}
