//! The leak scanner of every canary check: finds secrets (or a canary marker) in captured text,
//! raw and in every encoding a secret commonly leaks in.

use std::fmt;

use aho_corasick::AhoCorasick;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};

/// The shortest secret or marker the scanner accepts, in bytes. Shorter ones would make its
/// base64 needles so short that unrelated text matches them.
pub const MIN_SECRET_LEN: usize = 6;

/// An encoding a secret can leak in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LeakEncoding {
    /// The bytes as they are.
    Raw,
    /// Standard base64 (`+/`), with or without padding, at any byte offset within the encoded
    /// text; this covers `Authorization: Basic base64(id:secret)` and `base64(key + ":")`.
    Base64,
    /// URL-safe base64 (`-_`), with or without padding, at any byte offset.
    Base64UrlSafe,
    /// Percent-encoding, upper or lower hex digits: only the reserved bytes escaped (with `%20`
    /// or `+` for a space), or every byte escaped.
    PercentEncoded,
    /// A JSON string's content: the usual escapes (`\"`, `\\`, control characters), or every
    /// character as `\uXXXX` with upper or lower hex digits.
    JsonEscaped,
    /// Hexadecimal, upper or lower case.
    Hex,
}

/// A secret found in scanned text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leak {
    /// Which secret (its index in the slice given to [`find_leak`]).
    pub secret: usize,
    /// How it was encoded where it was found.
    pub encoding: LeakEncoding,
    /// Up to 300 characters of the line it was found on, with every encoding of every secret
    /// masked as `<SECRET n>`, so the report itself leaks nothing.
    pub context: String,
}

impl fmt::Display for Leak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "secret {} appears {:?}: {}",
            self.secret, self.encoding, self.context
        )
    }
}

/// Finds the first place where any of `secrets` appears in `text`, raw or encoded in any of the
/// [`LeakEncoding`]s. Give it the secrets themselves, or a marker that every secret contains
/// (such as `CANARY`): a marker is searched at each of the three byte offsets a base64
/// encoding can put it at, so it is found inside the encoding of any longer secret that holds
/// it, such as `base64(client_id:secret)`.
///
/// ```
/// use base64::Engine as _;
/// use pleo_auth_core::testing::{LeakEncoding, find_leak};
///
/// let header = format!(
///     "authorization: Basic {}",
///     base64::engine::general_purpose::STANDARD.encode("my-client:CANARY-secret-1")
/// );
/// let leak = find_leak(&header, &["CANARY"]).expect("found through the base64");
/// assert_eq!(leak.encoding, LeakEncoding::Base64);
/// assert!(!leak.context.contains("Q0FOQVJZ"));
/// assert!(find_leak("nothing to see", &["CANARY"]).is_none());
/// ```
///
/// # Panics
///
/// If a secret is shorter than [`MIN_SECRET_LEN`] bytes.
pub fn find_leak<S: AsRef<str>>(text: &str, secrets: &[S]) -> Option<Leak> {
    let needles = needles(secrets);
    let (patterns, owners): (Vec<&str>, Vec<(usize, LeakEncoding)>) = needles
        .iter()
        .map(|n| (n.text.as_str(), (n.secret, n.encoding)))
        .unzip();
    let matcher = AhoCorasick::new(&patterns).expect("the needles build a matcher");
    let found = matcher.find(text)?;
    let (secret, encoding) = owners[found.pattern().as_usize()];
    let line_start = text[..found.start()].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[found.end()..]
        .find('\n')
        .map_or(text.len(), |i| found.end() + i);
    let line = &text[line_start..line_end];
    let mut masked = String::with_capacity(line.len());
    let mut last = 0;
    for hit in matcher.find_iter(line) {
        masked.push_str(&line[last..hit.start()]);
        masked.push_str(&format!("<SECRET {}>", owners[hit.pattern().as_usize()].0));
        last = hit.end();
    }
    masked.push_str(&line[last..]);
    Some(Leak {
        secret,
        encoding,
        context: masked.chars().take(300).collect(),
    })
}

/// Panics if [`find_leak`] finds any of `secrets` in `text`, naming `what` (such as
/// `"the TRACE logs"`) and showing the masked line.
pub fn assert_no_leak<S: AsRef<str>>(what: &str, text: &str, secrets: &[S]) {
    if let Some(leak) = find_leak(text, secrets) {
        panic!("a secret leaked in {what}: {leak}");
    }
}

struct Needle {
    secret: usize,
    encoding: LeakEncoding,
    text: String,
}

/// Every string whose presence means a leak, longest first per secret, without repeats.
fn needles<S: AsRef<str>>(secrets: &[S]) -> Vec<Needle> {
    let mut out: Vec<Needle> = Vec::new();
    for (index, secret) in secrets.iter().enumerate() {
        let secret = secret.as_ref();
        assert!(
            secret.len() >= MIN_SECRET_LEN,
            "secret {index} is shorter than {MIN_SECRET_LEN} bytes: too short to scan for"
        );
        let bytes = secret.as_bytes();
        let mut add = |encoding, text: String| {
            if !out.iter().any(|n| n.text == text) {
                out.push(Needle {
                    secret: index,
                    encoding,
                    text,
                });
            }
        };
        add(LeakEncoding::Raw, secret.to_owned());
        for offset in 0..3 {
            add(LeakEncoding::Base64, base64_core(bytes, offset, false));
            add(
                LeakEncoding::Base64UrlSafe,
                base64_core(bytes, offset, true),
            );
        }
        for upper in [true, false] {
            add(
                LeakEncoding::PercentEncoded,
                percent(bytes, upper, false, false),
            );
            add(
                LeakEncoding::PercentEncoded,
                percent(bytes, upper, false, true),
            );
            add(
                LeakEncoding::PercentEncoded,
                percent(bytes, upper, true, false),
            );
            add(LeakEncoding::JsonEscaped, json_unicode(secret, upper));
            add(LeakEncoding::Hex, hex(bytes, upper));
        }
        let json = serde_json::to_string(secret).expect("a string serialises");
        add(
            LeakEncoding::JsonEscaped,
            json[1..json.len() - 1].to_owned(),
        );
    }
    out
}

/// The base64 characters that only `bytes` decide when `bytes` start `offset` bytes (mod 3)
/// into the encoded input: they appear in every base64 encoding of any text holding `bytes` at
/// such an offset, padded or not.
fn base64_core(bytes: &[u8], offset: usize, url_safe: bool) -> String {
    let mut input = vec![0u8; offset];
    input.extend_from_slice(bytes);
    let engine = if url_safe {
        URL_SAFE_NO_PAD
    } else {
        STANDARD_NO_PAD
    };
    let encoded = engine.encode(&input);
    let first = (8 * offset).div_ceil(6);
    let end = 8 * (offset + bytes.len()) / 6;
    encoded[first..end].to_owned()
}

/// Percent-encoding: every byte, or only those outside RFC 3986's unreserved set (a space as
/// `+` if `plus_for_space`).
fn percent(bytes: &[u8], upper: bool, every_byte: bool, plus_for_space: bool) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if plus_for_space && b == b' ' {
            out.push('+');
        } else if !every_byte
            && (b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
        {
            out.push(char::from(b));
        } else if upper {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    out
}

/// Every UTF-16 unit as a JSON `\uXXXX` escape.
fn json_unicode(secret: &str, upper: bool) -> String {
    secret
        .encode_utf16()
        .map(|unit| {
            if upper {
                format!("\\u{unit:04X}")
            } else {
                format!("\\u{unit:04x}")
            }
        })
        .collect()
}

fn hex(bytes: &[u8], upper: bool) -> String {
    bytes
        .iter()
        .map(|b| {
            if upper {
                format!("{b:02X}")
            } else {
                format!("{b:02x}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};

    use super::*;

    const MARKER: &str = "CANARY";

    fn encoding_of(text: &str, secrets: &[&str]) -> Option<LeakEncoding> {
        find_leak(text, secrets).map(|l| l.encoding)
    }

    /// Every prefix length 0..=5 in front of the secret, so each base64 alignment occurs twice.
    fn embeddings(secret: &str) -> Vec<String> {
        (0..6)
            .map(|n| format!("{}{secret}-tail", "p".repeat(n)))
            .collect()
    }

    #[test]
    fn raw_secrets_are_found() {
        let leak = find_leak("a\nline with CANARY-at_x1 inside\nb", &[MARKER]).unwrap();
        assert_eq!(leak.encoding, LeakEncoding::Raw);
        assert_eq!(leak.secret, 0);
        assert_eq!(leak.context, "line with <SECRET 0>-at_x1 inside");
    }

    #[test]
    fn base64_is_found_at_every_alignment_padded_or_not() {
        for embedded in embeddings("CANARY-at_x1") {
            for (engine, encoding) in [
                (STANDARD, LeakEncoding::Base64),
                (STANDARD_NO_PAD, LeakEncoding::Base64),
                (URL_SAFE, LeakEncoding::Base64UrlSafe),
                (URL_SAFE_NO_PAD, LeakEncoding::Base64UrlSafe),
            ] {
                let text = format!("value={}", engine.encode(&embedded));
                let found = encoding_of(&text, &[MARKER]);
                // Standard and URL-safe agree wherever the encoding has no '+', '/', '-' or '_'.
                assert!(
                    found == Some(encoding)
                        || found
                            == Some(if encoding == LeakEncoding::Base64 {
                                LeakEncoding::Base64UrlSafe
                            } else {
                                LeakEncoding::Base64
                            }),
                    "{embedded:?} in {text}: {found:?}"
                );
            }
        }
    }

    #[test]
    fn url_safe_and_standard_base64_are_told_apart() {
        // ">>>" encodes to "Pj4+" and "???" to "Pz8/" (standard), "Pj4-" and "Pz8_" (URL-safe).
        let secret = "CANARY>>>???";
        let standard = STANDARD.encode(secret);
        let url_safe = URL_SAFE.encode(secret);
        assert_eq!(standard, "Q0FOQVJZPj4+Pz8/");
        assert_eq!(url_safe, "Q0FOQVJZPj4-Pz8_");
        assert_eq!(
            encoding_of(&format!("x{standard}y"), &[secret]),
            Some(LeakEncoding::Base64)
        );
        assert_eq!(
            encoding_of(&format!("x{url_safe}y"), &[secret]),
            Some(LeakEncoding::Base64UrlSafe)
        );
    }

    #[test]
    fn the_basic_authorization_forms_are_found() {
        let secret = "CANARY-client-secret-7";
        for credentials in [
            format!("pleo-auth-demo:{secret}"),
            format!("x:{secret}"),
            format!("xy:{secret}"),
            format!("{secret}:"),
        ] {
            let header = format!("Authorization: Basic {}", STANDARD.encode(&credentials));
            assert_eq!(
                encoding_of(&header, &[MARKER]),
                Some(LeakEncoding::Base64),
                "{credentials}"
            );
            assert_eq!(
                encoding_of(&header, &[secret]),
                Some(LeakEncoding::Base64),
                "{credentials}"
            );
        }
    }

    #[test]
    fn percent_encodings_are_found_in_both_cases() {
        let secret = "CANARY key/1";
        for (text, scanned) in [
            ("q=CANARY%20key%2F1", secret),
            ("q=CANARY%20key%2f1", secret),
            ("q=CANARY+key%2F1", secret),
            ("q=%43%41%4E%41%52%59%20", MARKER),
            ("q=%43%41%4e%41%52%59", MARKER),
        ] {
            assert_eq!(
                encoding_of(text, &[scanned]),
                Some(LeakEncoding::PercentEncoded),
                "{text}"
            );
        }
    }

    #[test]
    fn json_escapes_are_found() {
        let secret = "CANARY\"quoted\\\n";
        let escaped = serde_json::to_string(&serde_json::json!({ "t": secret })).unwrap();
        assert_eq!(
            encoding_of(&escaped, &[secret]),
            Some(LeakEncoding::JsonEscaped)
        );
        for text in [
            "\\u0043\\u0041\\u004E\\u0041\\u0052\\u0059",
            "\\u0043\\u0041\\u004e\\u0041\\u0052\\u0059",
        ] {
            assert_eq!(
                encoding_of(text, &[MARKER]),
                Some(LeakEncoding::JsonEscaped),
                "{text}"
            );
        }
    }

    #[test]
    fn hex_is_found_in_both_cases() {
        for text in ["bytes: 43414E415259", "bytes: 43414e4152592d"] {
            assert_eq!(
                encoding_of(text, &[MARKER]),
                Some(LeakEncoding::Hex),
                "{text}"
            );
        }
    }

    #[test]
    fn unrelated_text_is_not_a_leak() {
        let text = "GET /v2/employees 200 canary CANAR-Y Q0FOQV_ 43414E41 %43%41 \
                    fingerprint=3b1f0c9a7d2e4f61 token=[redacted] Basic cGxlby1hdXRoLWRlbW86eA==";
        assert_eq!(find_leak(text, &[MARKER, "CANARY-client-secret-7"]), None);
        assert_eq!(find_leak("", &[MARKER]), None);
        let no_secrets: [&str; 0] = [];
        assert_eq!(find_leak("CANARY", &no_secrets), None);
    }

    #[test]
    fn the_report_masks_every_encoding_on_the_line() {
        let b64 = STANDARD.encode("id:CANARY-secret");
        let text = format!("first CANARY-x then {b64} end");
        let leak = find_leak(&text, &[MARKER]).unwrap();
        assert!(!leak.context.contains("CANARY"), "{}", leak.context);
        assert!(
            find_leak(&leak.context, &[MARKER]).is_none(),
            "{}",
            leak.context
        );
        let panic =
            std::panic::catch_unwind(|| assert_no_leak("the logs", &text, &[MARKER])).unwrap_err();
        let message = panic.downcast::<String>().unwrap();
        assert!(
            message.starts_with("a secret leaked in the logs"),
            "{message}"
        );
        assert!(find_leak(&message, &[MARKER]).is_none(), "{message}");
    }

    #[test]
    #[should_panic(expected = "too short to scan for")]
    fn short_secrets_are_refused() {
        find_leak("text", &["abc"]);
    }
}
