//! The small HTML pages shown at the end of an OAuth redirect. They never reflect request input.

/// Headers that keep the pages out of caches, frames and `Referer` headers.
pub(crate) const SECURITY_HEADERS: [(&str, &str); 5] = [
    ("cache-control", "no-store"),
    (
        "content-security-policy",
        "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    ),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("x-content-type-options", "nosniff"),
];

/// The authorization reached the application.
pub(crate) const RECEIVED: (&str, &str) = (
    "Authorization received",
    "You can close this window and return to the application.",
);
/// The redirect carried an error or no code.
pub(crate) const FAILED: (&str, &str) = (
    "Authorization not completed",
    "The connection to Pleo was not completed. Return to the application for details.",
);
/// A path other than the redirect path.
pub(crate) const NOT_FOUND: (&str, &str) = ("Not found", "There is nothing here.");
/// The redirect path was already answered once.
pub(crate) const ALREADY_USED: (&str, &str) = (
    "Already used",
    "This sign-in link was already used. Return to the application.",
);
/// A request that is not a plain `GET` for this listener.
pub(crate) const BAD_REQUEST: (&str, &str) = ("Bad request", "The request was not understood.");
/// Nobody is signed in (the app's authorization said so).
#[cfg(feature = "axum")]
pub(crate) const UNAUTHENTICATED: (&str, &str) = (
    "Sign in first",
    "Sign in to the application, then connect to Pleo from there.",
);
/// Signed in, but not allowed (the app's authorization said so).
#[cfg(feature = "axum")]
pub(crate) const FORBIDDEN: (&str, &str) = (
    "Not allowed",
    "Your account may not do this. Return to the application.",
);
/// The operator view could not be shown.
#[cfg(feature = "axum")]
pub(crate) const ADMIN_FAILED: (&str, &str) = (
    "Connections unavailable",
    "The connections could not be read. Try again later.",
);
/// The connection could not be started.
#[cfg(feature = "axum")]
pub(crate) const CONNECT_FAILED: (&str, &str) = (
    "Could not start the connection",
    "The connection to Pleo could not be started. Try again later.",
);

/// A complete page with a title and one paragraph; both are escaped.
pub(crate) fn page(title: &str, text: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width\"><title>{title}</title>\
<style>body{{font-family:system-ui,sans-serif;margin:4rem auto;max-width:32rem;padding:0 1rem}}</style>\
</head><body><h1>{title}</h1><p>{text}</p></body></html>\n",
        title = escape_html(title),
        text = escape_html(text),
    )
}

/// Escapes text for HTML element content and quoted attribute values.
pub(crate) fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_escape_their_text() {
        let html = page("<b>", "\"x\" & 'y'");
        assert!(html.contains("&lt;b&gt;"));
        assert!(html.contains("&quot;x&quot; &amp; &#39;y&#39;"));
        assert!(!html.contains("<b>"));
    }
}
