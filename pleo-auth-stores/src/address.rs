//! Address checks shared by the stores that take a URL with a password (Redis, PostgreSQL).

use url::Url;

/// Whether `host` (a name, an IP address, or an IPv6 address in brackets) is loopback.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The URL with its password, if any, replaced by `[redacted]`; with `hide_query`, its query
/// too (where the query may hold a password).
pub(crate) fn redact_url(raw: &str, hide_query: bool) -> String {
    match Url::parse(raw) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("[redacted]"));
            }
            if hide_query && url.query().is_some() {
                url.set_query(Some("[redacted]"));
            }
            url.to_string()
        }
        Err(_) => "[unparsable URL]".to_owned(),
    }
}
