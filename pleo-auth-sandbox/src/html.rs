//! The consent page and the authorization error page (plain HTML forms, no JavaScript).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

use crate::config::{Config, Subject};

const STYLE: &str = "body{font-family:system-ui,sans-serif;background:#f4f1ec;margin:0}\
main{max-width:32rem;margin:3rem auto;background:#fff;padding:2rem;border-radius:8px}\
h1{font-size:1.3rem}code{background:#eee;padding:0 .3em}\
select,button{font-size:1rem;margin:.4rem .4rem .4rem 0;padding:.4rem .8rem}\
.env{color:#777;font-size:.85rem}";

/// Adds headers that keep the page out of caches and frames.
fn harden(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// What the consent page shows.
pub(crate) struct ConsentPage<'a> {
    pub(crate) client_name: &'a str,
    pub(crate) scopes: &'a [String],
    pub(crate) consent_id: &'a str,
    pub(crate) preselect: Option<Subject>,
    /// The authorization endpoint's path, where the form posts.
    pub(crate) action: &'a str,
}

/// The consent page: client name, requested scopes, a company selector, Allow and Deny.
pub(crate) fn consent_page(config: &Config, page: &ConsentPage<'_>) -> Response {
    let default = page
        .preselect
        .or_else(|| config.companies.first().map(|c| Subject::Company(c.id)));
    let option = |subject: Subject, label: &str| {
        let selected = if Some(subject) == default {
            " selected"
        } else {
            ""
        };
        format!(
            "<option value=\"{}\"{selected}>{}</option>",
            escape_html(&subject.urn()),
            escape_html(label)
        )
    };
    let mut options = String::new();
    for org in &config.organisations {
        options.push_str(&format!("<optgroup label=\"{}\">", escape_html(&org.name)));
        options.push_str(&option(
            Subject::Organisation(org.id),
            &format!("{} (all companies)", org.name),
        ));
        for c in config
            .companies
            .iter()
            .filter(|c| c.organisation == Some(org.id))
        {
            options.push_str(&option(Subject::Company(c.id), &c.name));
        }
        options.push_str("</optgroup>");
    }
    for c in config.companies.iter().filter(|c| c.organisation.is_none()) {
        options.push_str(&option(Subject::Company(c.id), &c.name));
    }
    let scopes: String = page
        .scopes
        .iter()
        .map(|s| format!("<li><code>{}</code></li>", escape_html(s)))
        .collect();
    let client = escape_html(page.client_name);
    let body = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>Authorize {client} - Pleo sandbox</title><style>{STYLE}</style></head><body><main>\
<p class=\"env\">Pleo sandbox - environment {env}</p>\
<h1>{client} wants to access your Pleo account</h1>\
<p>It asks for these permissions:</p><ul>{scopes}</ul>\
<form method=\"post\" action=\"{action}\">\
<input type=\"hidden\" name=\"consent_id\" value=\"{consent_id}\">\
<label for=\"subject\">Company</label><br>\
<select id=\"subject\" name=\"subject\">{options}</select><br>\
<button type=\"submit\" name=\"decision\" value=\"allow\">Allow</button>\
<button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button>\
</form></main></body></html>\n",
        env = escape_html(&config.environment_name),
        consent_id = escape_html(page.consent_id),
        action = escape_html(page.action),
    );
    harden(Html(body).into_response())
}

/// An error page for authorization requests that must not redirect (unknown client or
/// unregistered redirect URI, unknown or expired consent).
pub(crate) fn error_page(status: StatusCode, title: &str, detail: &str) -> Response {
    let body = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>{title} - Pleo sandbox</title><style>{STYLE}</style></head><body><main>\
<h1>{title}</h1><p>{detail}</p></main></body></html>\n",
        title = escape_html(title),
        detail = escape_html(detail),
    );
    harden((status, Html(body)).into_response())
}

/// Escapes text for HTML element content and double-quoted attribute values.
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
    fn html_is_escaped() {
        assert_eq!(
            escape_html(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
