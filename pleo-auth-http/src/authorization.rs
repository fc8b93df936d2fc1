//! The app's say in the connect and admin routes: which tenant the signed-in user may connect,
//! and whether they may use the operator view.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use axum::http::request::Parts;
use pleo_auth_core::TenantId;
use url::Url;

use crate::error::{Error, Result};

/// A path on the app's own origin, such as `/settings/pleo?tab=1`: where the routes send the
/// browser back to (after connecting, or to sign in). Anything that could leave the origin is
/// refused when it is made: a scheme or host, `//` or `\` (which browsers read as another
/// host), control characters, a fragment.
///
/// ```
/// use pleo_auth_http::SameOriginPath;
///
/// assert!(SameOriginPath::new("/settings/pleo").is_ok());
/// assert!(SameOriginPath::new("https://evil.example/").is_err());
/// assert!(SameOriginPath::new("//evil.example/").is_err());
/// assert!(SameOriginPath::new("/\\evil.example/").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SameOriginPath(String);

impl SameOriginPath {
    /// Validates `path`: it starts with a single `/`, holds no `\`, control character, space or
    /// fragment, and stays on the origin it is resolved against.
    pub fn new(path: impl Into<String>) -> Result<Self> {
        let path = path.into();
        let refused = || {
            Error::new(
                pleo_auth_core::ErrorKind::InvalidInput,
                "a return path must be a path on the app's own origin, such as /settings/pleo",
            )
        };
        if !path.starts_with('/')
            || path.starts_with("//")
            || path.len() > 2048
            || path
                .chars()
                .any(|c| c == '\\' || c == '#' || c.is_control() || c.is_whitespace())
        {
            return Err(refused());
        }
        let base = Url::parse("https://origin.invalid/").expect("a valid base");
        let resolved = base.join(&path).map_err(|_| refused())?;
        if resolved.origin() != base.origin() {
            return Err(refused());
        }
        Ok(Self(path))
    }

    /// The path.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// This path with `pairs` appended to its query.
    pub(crate) fn with_query(&self, pairs: &[(&str, &str)]) -> String {
        let mut out = self.0.clone();
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for (name, value) in pairs {
            query.append_pair(name, value);
        }
        out.push(if out.contains('?') { '&' } else { '?' });
        out.push_str(&query.finish());
        out
    }
}

impl fmt::Debug for SameOriginPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SameOriginPath").field(&self.0).finish()
    }
}

impl fmt::Display for SameOriginPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why the app refuses a request to the connect or admin routes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// Nobody is signed in: a `401` page.
    Unauthenticated,
    /// Signed in, but not allowed: a `403` page.
    Forbidden,
    /// Send the browser to the app's sign-in page (`303 See Other`).
    Login(SameOriginPath),
}

/// The app's authorization for the connect routes (and the admin routes): it maps a request
/// (its headers, cookies, extensions such as a session layer's) to what the signed-in user may
/// do. The routes never take a tenant from the query string on trust.
///
/// A closure `Fn(&Parts) -> Result<TenantId, Rejection>` is one (for apps whose session
/// lookup does not await); it lets nobody into the admin routes.
///
/// ```
/// use axum::http::request::Parts;
/// use pleo_auth_core::TenantId;
/// use pleo_auth_http::{ConnectAuthorization, Rejection, SameOriginPath};
///
/// #[derive(Clone)]
/// struct Sessions;
///
/// impl Sessions {
///     /// Your app's session lookup (a stand-in here).
///     async fn user(&self, _request: &Parts) -> Option<(TenantId, bool)> {
///         None
///     }
/// }
///
/// #[async_trait::async_trait]
/// impl ConnectAuthorization for Sessions {
///     async fn tenant(&self, request: &Parts) -> Result<TenantId, Rejection> {
///         match self.user(request).await {
///             Some((tenant, _)) => Ok(tenant),
///             None => Err(Rejection::Login(SameOriginPath::new("/login").expect("a path"))),
///         }
///     }
///
///     async fn admin(&self, request: &Parts) -> Result<(), Rejection> {
///         match self.user(request).await {
///             Some((_, true)) => Ok(()),
///             Some(_) => Err(Rejection::Forbidden),
///             None => Err(Rejection::Unauthenticated),
///         }
///     }
/// }
/// ```
#[async_trait]
pub trait ConnectAuthorization: Send + Sync + 'static {
    /// The tenant the signed-in user may connect to Pleo, or why not. A `tenant` query
    /// parameter that names another tenant is refused with `403`.
    async fn tenant(&self, request: &Parts) -> std::result::Result<TenantId, Rejection>;

    /// Whether the signed-in user may use the operator view ([`admin_router`]). The default
    /// lets nobody in.
    ///
    /// [`admin_router`]: crate::admin_router
    async fn admin(&self, request: &Parts) -> std::result::Result<(), Rejection> {
        let _ = request;
        Err(Rejection::Forbidden)
    }
}

#[async_trait]
impl<F> ConnectAuthorization for F
where
    F: Fn(&Parts) -> std::result::Result<TenantId, Rejection> + Send + Sync + 'static,
{
    async fn tenant(&self, request: &Parts) -> std::result::Result<TenantId, Rejection> {
        self(request)
    }
}

/// A shared, type-erased authorization.
pub type DynConnectAuthorization = Arc<dyn ConnectAuthorization>;

/// **Danger**: the routes do no authorization of their own. Use it only when a layer in front
/// of them (your middleware, a gateway) already signs the user in, checks that they may connect
/// the tenant named by the `tenant` query parameter, and keeps everyone else out of the admin
/// routes. `/connect` then requires `?tenant=` and trusts it; the admin routes let every request
/// in.
///
/// Without such a layer, anyone can link any Pleo company to any tenant.
#[derive(Debug, Clone, Copy, Default)]
pub struct DangerAuthorizedElsewhere;

#[async_trait]
impl ConnectAuthorization for DangerAuthorizedElsewhere {
    async fn tenant(&self, request: &Parts) -> std::result::Result<TenantId, Rejection> {
        tenant_param(request.uri.query())
            .ok()
            .flatten()
            .ok_or(Rejection::Forbidden)
    }

    async fn admin(&self, _request: &Parts) -> std::result::Result<(), Rejection> {
        Ok(())
    }
}

/// The `tenant` parameter: absent, or exactly one valid tenant id; nothing else allowed.
pub(crate) fn tenant_param(query: Option<&str>) -> std::result::Result<Option<TenantId>, ()> {
    let mut tenant = None;
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if name != "tenant" || tenant.is_some() {
            return Err(());
        }
        tenant = Some(TenantId::new(value.into_owned()).map_err(|_| ())?);
    }
    Ok(tenant)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_on_the_same_origin_are_accepted() {
        for good in ["/", "/settings/pleo", "/a?b=c&d=%2F", "/ü"] {
            assert!(SameOriginPath::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "settings",
            "https://evil.example/",
            "//evil.example/x",
            "/\\evil.example",
            "/a\\b",
            "/a b",
            "/a\nb",
            "/a#frag",
            "javascript:alert(1)",
            "/\t/evil.example",
        ] {
            assert!(SameOriginPath::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn outcomes_are_appended_to_the_query() {
        let path = SameOriginPath::new("/settings").unwrap();
        assert_eq!(
            path.with_query(&[("pleo_connect", "connected")]),
            "/settings?pleo_connect=connected"
        );
        let path = SameOriginPath::new("/settings?tab=pleo").unwrap();
        assert_eq!(
            path.with_query(&[("pleo_connect", "failed"), ("pleo_reason", "conflict")]),
            "/settings?tab=pleo&pleo_connect=failed&pleo_reason=conflict"
        );
    }
}
