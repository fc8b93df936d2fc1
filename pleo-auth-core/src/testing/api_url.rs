//! The property every fuzzer of [`Environment::api_url`] checks: it never panics, and what it
//! builds stays on the API host, under the API base path, exactly as asked.

use url::Url;

use crate::Environment;
use crate::error::ErrorKind;

/// Calls [`Environment::api_url`] with `path` and checks its contract, independently of how it
/// is implemented:
///
/// * an error is [`ErrorKind::InvalidInput`];
/// * a URL has the API base's origin, no user information and no fragment;
/// * its path is the base path followed by `path`'s path part (before any `?`), unchanged;
/// * no segment below the base path is empty, or decodes to `.`, `..` or something with `/` or
///   `\`;
/// * it parses back to itself.
///
/// Returns the URL (or `None` for a refused path); a broken contract is an `Err` describing it.
/// A panic inside `api_url` propagates, which is what fuzzers look for.
///
/// ```
/// use pleo_auth_core::{Environment, testing::check_api_url};
///
/// let env = Environment::production();
/// assert!(check_api_url(&env, "/v1/introspect").unwrap().is_some());
/// assert!(check_api_url(&env, "/%2e%2e/x").unwrap().is_none());
/// ```
pub fn check_api_url(environment: &Environment, path: &str) -> Result<Option<Url>, String> {
    let url = match environment.api_url(path) {
        Ok(url) => url,
        Err(e) if e.kind() == ErrorKind::InvalidInput => return Ok(None),
        Err(e) => return Err(format!("{path:?} failed with kind {:?}", e.kind())),
    };
    let base = environment.api_base();
    let fail = |what: &str| Err(format!("{path:?} gave {url}: {what}"));
    if url.origin() != base.origin() {
        return fail("another origin");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return fail("user information");
    }
    if url.fragment().is_some() {
        return fail("a fragment");
    }
    let Some(below) = url.path().strip_prefix(base.path()) else {
        return fail("outside the base path");
    };
    let asked = path.split_once('?').map_or(path, |(p, _)| p);
    if Some(below) != asked.strip_prefix('/') {
        return fail("the path was rewritten");
    }
    for segment in below.split('/') {
        let decoded = percent_encoding::percent_decode_str(segment).collect::<Vec<u8>>();
        if decoded.is_empty()
            || decoded == b"."
            || decoded == b".."
            || decoded.iter().any(|b| matches!(b, b'/' | b'\\'))
        {
            return fail("an empty, dot or slash segment");
        }
    }
    match Url::parse(url.as_str()) {
        Ok(again) if again == url => Ok(Some(url)),
        _ => fail("it does not parse back to itself"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_paths_and_counts_refusals_as_fine() {
        let env = Environment::staging();
        let url = check_api_url(&env, "/v2/employees?company_id=1")
            .unwrap()
            .unwrap();
        assert_eq!(
            url.as_str(),
            "https://external.staging.pleo.io/v2/employees?company_id=1"
        );
        for refused in ["/\\\\h:99999/x", "/%2e%2e/x", "//e.example", ""] {
            assert_eq!(check_api_url(&env, refused), Ok(None), "{refused}");
        }
    }
}
