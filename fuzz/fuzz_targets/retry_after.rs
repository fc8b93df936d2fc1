//! `Retry-After` values: seconds or an HTTP date, anything else is `None`; never a panic.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use pleo_auth_http::transport::parse_retry_after;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let now = SystemTime::UNIX_EPOCH
        + Duration::from_secs(u64::from(u32::from_le_bytes([
            data[0], data[1], data[2], data[3],
        ])));
    let Ok(text) = std::str::from_utf8(&data[4..]) else {
        return;
    };
    if let Some(wait) = parse_retry_after(text, now) {
        let trimmed = text.trim();
        if trimmed.bytes().all(|b| b.is_ascii_digit()) {
            assert_eq!(wait.as_secs(), trimmed.parse::<u64>().unwrap());
        }
    }
});
