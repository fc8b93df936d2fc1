//! Key format validation and masking.
//!
//! Pleo does not document the format of API keys. This library accepts 16 to 512 bytes of
//! printable ASCII without spaces (`!` to `~`), which holds every key shape seen so far and
//! refuses what a copy-and-paste typically adds (line breaks, spaces, invisible characters).
//! The check runs before a key is sent anywhere, as Pleo asks ("validate key format before
//! submitting").

use pleo_auth_core::ApiKey;

use crate::error::{Error, ErrorKind, Result};

/// The shortest key accepted, in bytes.
pub const MIN_API_KEY_LEN: usize = 16;
/// The longest key accepted, in bytes.
pub const MAX_API_KEY_LEN: usize = 512;
/// Keys shorter than this many characters are masked completely by [`masked`].
pub const MIN_LEN_TO_SHOW_SUFFIX: usize = 12;
/// How many trailing characters [`masked`] shows at most.
pub const SHOWN_SUFFIX_LEN: usize = 4;

/// Checks the shape of a key without sending it anywhere.
///
/// Refuses, with a reason that never quotes the key: an empty key, leading or trailing
/// whitespace, more than [`MAX_API_KEY_LEN`] or fewer than [`MIN_API_KEY_LEN`] bytes, control
/// characters, non-ASCII characters and spaces.
///
/// ```
/// use pleo_auth_apikey::{ErrorKind, validate_key_format};
/// use pleo_auth_core::ApiKey;
///
/// assert!(validate_key_format(&ApiKey::new("abcdefgh-12345678")).is_ok());
/// let err = validate_key_format(&ApiKey::new("abcdefgh-12345678\n")).unwrap_err();
/// assert!(matches!(err.kind(), ErrorKind::InvalidKeyFormat { .. }));
/// assert_eq!(err.kind().core_kind(), pleo_auth_core::ErrorKind::InvalidInput);
/// assert_eq!(err.to_string(), "api key is malformed: it has leading or trailing whitespace");
/// ```
pub fn validate_key_format(key: &ApiKey) -> Result<()> {
    let raw = key.expose_secret();
    let reason = if raw.is_empty() {
        Some("is empty")
    } else if raw.starts_with(char::is_whitespace) || raw.ends_with(char::is_whitespace) {
        Some("has leading or trailing whitespace")
    } else if raw.len() > MAX_API_KEY_LEN {
        Some("is longer than 512 bytes")
    } else if raw.chars().any(char::is_control) {
        Some("contains control characters")
    } else if !raw.is_ascii() {
        Some("contains non-ascii characters")
    } else if raw.bytes().any(|b| b == b' ') {
        Some("contains spaces")
    } else if raw.len() < MIN_API_KEY_LEN {
        Some("is shorter than 16 characters")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::new(ErrorKind::InvalidKeyFormat { reason })),
        None => Ok(()),
    }
}

/// A form of the key that is safe to display: `****` followed by at most its last
/// [`SHOWN_SUFFIX_LEN`] characters. Keys shorter than [`MIN_LEN_TO_SHOW_SUFFIX`] characters, or
/// whose last characters are not printable ASCII, show nothing but `****`.
///
/// Pleo asks that a key is never displayed in full again after it was entered.
///
/// ```
/// use pleo_auth_apikey::masked;
/// use pleo_auth_core::ApiKey;
///
/// assert_eq!(masked(&ApiKey::new("sk_live_0123456789abcd")), "****abcd");
/// assert_eq!(masked(&ApiKey::new("short-key")), "****");
/// ```
pub fn masked(key: &ApiKey) -> String {
    let raw = key.expose_secret();
    let count = raw.chars().count();
    if count >= MIN_LEN_TO_SHOW_SUFFIX {
        let suffix: String = raw.chars().skip(count - SHOWN_SUFFIX_LEN).collect();
        if suffix.chars().all(|c| c.is_ascii_graphic()) {
            return format!("****{suffix}");
        }
    }
    "****".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pleo_auth_core::ErrorKind as CoreKind;

    fn reason(raw: &str) -> Option<&'static str> {
        match validate_key_format(&ApiKey::new(raw)) {
            Ok(()) => None,
            Err(err) => match err.kind() {
                ErrorKind::InvalidKeyFormat { reason } => Some(reason),
                _ => panic!("unexpected error {err:?}"),
            },
        }
    }

    #[test]
    fn accepts_printable_ascii_of_sane_length() {
        for good in [
            "a".repeat(MIN_API_KEY_LEN),
            "b".repeat(MAX_API_KEY_LEN),
            "CANARY-ik_staging_0123456789-_.~!#$%&'()*+,/:;<=>?@[]^`{|}".to_owned(),
        ] {
            assert_eq!(reason(&good), None, "{good}");
        }
    }

    #[test]
    fn refuses_each_bad_shape_with_its_own_reason() {
        let long = "c".repeat(MAX_API_KEY_LEN + 1);
        let too_long = format!("is longer than {MAX_API_KEY_LEN} bytes");
        let too_short = format!("is shorter than {MIN_API_KEY_LEN} characters");
        let cases: [(&str, &str); 11] = [
            ("", "is empty"),
            (
                " CANARY-0123456789abcdef",
                "has leading or trailing whitespace",
            ),
            (
                "CANARY-0123456789abcdef\n",
                "has leading or trailing whitespace",
            ),
            (
                "CANARY-0123456789abcdef\u{a0}",
                "has leading or trailing whitespace",
            ),
            (&long, &too_long),
            (
                "CANARY-0123\u{0}456789abcdef",
                "contains control characters",
            ),
            (
                "CANARY-0123\u{7f}456789abcdef",
                "contains control characters",
            ),
            (
                "CANARY-0123\u{200b}456789abcdef",
                "contains non-ascii characters",
            ),
            ("CANARY-0123ü456789abcdef", "contains non-ascii characters"),
            ("CANARY-0123 456789abcdef", "contains spaces"),
            ("CANARY-short", &too_short),
        ];
        for (raw, expected) in cases {
            assert_eq!(reason(raw), Some(expected), "{raw:?}");
            let err = validate_key_format(&ApiKey::new(raw)).unwrap_err();
            assert_eq!(err.kind().core_kind(), CoreKind::InvalidInput);
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains("CANARY"), "{shown}");
        }
    }

    #[test]
    fn masked_shows_at_most_four_trailing_characters() {
        assert_eq!(masked(&ApiKey::new("CANARY-0123456789wxyz")), "****wxyz");
        assert_eq!(masked(&ApiKey::new("CANARY-wxyz")), "****");
        assert_eq!(masked(&ApiKey::new("123456789abc")), "****9abc");
        assert_eq!(masked(&ApiKey::new("")), "****");
        assert_eq!(masked(&ApiKey::new("CANARY-01234567\n\tab")), "****");
        assert_eq!(masked(&ApiKey::new("CANARY-0123456789üüüü")), "****");
    }
}
