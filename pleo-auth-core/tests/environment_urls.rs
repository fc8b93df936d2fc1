//! `Environment` URL building never panics and never leaves the API base, whatever the path.
//! (`tests/reliability_fuzz.rs` checks the same property with another generator, and
//! `fuzz/fuzz_targets/environment_url.rs` with cargo-fuzz.)

use pleo_auth_core::Environment;
use pleo_auth_core::testing::check_api_url;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn api_urls_never_panic_and_never_leave_the_base(
        path in prop_oneof![
            "(/|\\\\|\\.|%2[eEfF]|%5[cC]|%0[0a]|%|[a-z0-9:@?#=&]|\\PC){0,24}",
            "(/[a-zA-Z0-9._~:@!$&'()*+,;=-]{1,8}){1,5}(\\?[ -~]{0,12})?",
        ],
    ) {
        for env in [
            Environment::production(),
            Environment::custom("sandbox", "http://127.0.0.1:9", "http://127.0.0.1:9/api").unwrap(),
            Environment::custom("deep", "https://a.example/x/", "https://b.example:8443/x/y/").unwrap(),
        ] {
            check_api_url(&env, &path).map_err(TestCaseError::fail)?;
        }
    }
}
