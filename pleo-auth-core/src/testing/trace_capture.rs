//! Secret hygiene checks: capture every log line at TRACE and look for a canary marker.
//!
//! Tests put a marker such as `CANARY` into every token, key and secret they use, run the code,
//! then assert that the marker appears nowhere in what was logged or formatted, raw or encoded
//! ([`find_leak`](super::find_leak)).

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use tracing_subscriber::fmt::format::FmtSpan;

use super::assert_no_leak;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Everything logged by every thread of this process, at TRACE, for all targets (reqwest,
/// hyper, rustls and `log` records included), from the first [`TraceCapture::install`] on.
#[derive(Debug, Clone)]
pub struct TraceCapture {
    buffer: Arc<Mutex<Vec<u8>>>,
}

static CAPTURE: OnceLock<TraceCapture> = OnceLock::new();

struct BufferWriter(Arc<Mutex<Vec<u8>>>);

impl Write for BufferWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl TraceCapture {
    /// Installs the process-wide capturing subscriber (once) and returns it.
    ///
    /// # Panics
    ///
    /// When another global subscriber was installed first: the capture would see nothing.
    pub fn install() -> TraceCapture {
        CAPTURE
            .get_or_init(|| {
                let buffer = Arc::new(Mutex::new(Vec::new()));
                let writer = buffer.clone();
                tracing_subscriber::fmt()
                    .with_max_level(tracing::Level::TRACE)
                    .with_ansi(false)
                    .with_span_events(FmtSpan::NEW | FmtSpan::CLOSE)
                    .with_writer(move || BufferWriter(writer.clone()))
                    .finish()
                    .try_init()
                    .expect("the trace capture is the only global subscriber of this test binary");
                TraceCapture { buffer }
            })
            .clone()
    }

    /// What has been logged so far.
    pub fn contents(&self) -> String {
        let buffer = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&buffer).into_owned()
    }

    /// Panics if `marker` appears in what was logged, raw or in any encoding that
    /// [`find_leak`](super::find_leak) knows, showing the offending line (with the marker
    /// masked, so the failure output does not leak it either). Returns how many bytes were
    /// captured, so a test can also assert that logging happened at all.
    pub fn assert_absent(&self, marker: &str) -> usize {
        let text = self.contents();
        assert_marker_absent(marker, "trace output", &text);
        text.len()
    }
}

/// Panics if `marker` appears in `text`, raw or in any encoding that
/// [`find_leak`](super::find_leak) knows, naming `what` and showing the line with every
/// encoding of the marker masked.
pub fn assert_marker_absent(marker: &str, what: &str, text: &str) {
    assert_no_leak(what, text, &[marker]);
}

/// `{}` and `{:?}` of an error and of every error in its `source()` chain, for leak checks.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = format!("{err} | {err:?}");
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(&format!(" | {s} | {s:?}"));
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::find_leak;

    #[test]
    fn finds_and_masks_the_marker_raw_and_encoded() {
        for (text, masked) in [
            ("ok\nleaked CANARY-1 here", "leaked <SECRET 0>-1 here"),
            (
                "ok\nBasic aWQ6Q0FOQVJZLTE= here",
                "Basic aWQ6<SECRET 0>LTE= here",
            ),
        ] {
            let result =
                std::panic::catch_unwind(|| assert_marker_absent("CANARY", "output", text));
            let message = *result.unwrap_err().downcast::<String>().unwrap();
            assert!(message.contains(masked), "{message}");
            assert!(find_leak(&message, &["CANARY"]).is_none(), "{message}");
        }
        assert_marker_absent("CANARY", "output", "clean");
    }

    #[test]
    fn error_chain_includes_sources() {
        let err = crate::Error::unavailable("outer").with_source(std::io::Error::other("inner"));
        let text = error_chain(&err);
        assert!(text.contains("outer") && text.contains("inner"), "{text}");
    }
}
