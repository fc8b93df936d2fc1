//! `Environment` URL building from arbitrary API paths: never a panic, and every URL it builds
//! stays on the API host and under the API base path, exactly as asked
//! (`pleo_auth_core::testing::check_api_url`); refused paths fail with `InvalidInput`.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pleo_auth_core::Environment;
use pleo_auth_core::testing::check_api_url;

fn environments() -> &'static [Environment; 2] {
    static ENVIRONMENTS: OnceLock<[Environment; 2]> = OnceLock::new();
    ENVIRONMENTS.get_or_init(|| {
        [
            Environment::production(),
            Environment::custom("fuzz", "http://127.0.0.1:9/", "http://127.0.0.1:9/api/v").unwrap(),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    let path = String::from_utf8_lossy(data);
    for environment in environments() {
        if let Err(broken) = check_api_url(environment, &path) {
            panic!("{broken}");
        }
    }
});
