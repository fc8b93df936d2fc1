//! The system clock works under valgrind, which services that load native code are often run
//! under in CI. rustix's own reader of the auxiliary vector finds the kernel's vDSO at an address
//! valgrind has not mapped, and the first clock read crashes the process (rustix issue #1559); the
//! workspace turns on rustix's `use-libc-auxv`, so the vector comes from libc, which valgrind
//! rewrites. This test runs itself again under valgrind (memcheck) and fails if that run does.

use std::process::Command;

use pleo_auth_core::{Clock, SystemClock};

/// Set in the run under valgrind.
const UNDER_VALGRIND: &str = "PLEO_AUTH_TEST_UNDER_VALGRIND";

#[test]
fn every_system_clock_reading_works_under_valgrind() {
    if std::env::var_os(UNDER_VALGRIND).is_some() {
        let clock = SystemClock;
        let before = clock.instant();
        let coarse = clock.coarse_instant();
        assert!(clock.now() > std::time::UNIX_EPOCH);
        assert!(clock.instant() >= before);
        assert!(clock.coarse_instant() >= coarse);
        println!("clock read under valgrind");
        return;
    }
    let test = std::env::current_exe().expect("the test binary");
    let output = Command::new("valgrind")
        .args(["--quiet", "--error-exitcode=99"])
        .arg(&test)
        .args([
            "--exact",
            "every_system_clock_reading_works_under_valgrind",
            "--nocapture",
        ])
        .env(UNDER_VALGRIND, "1")
        .output()
        .expect("valgrind runs (`.ci/run` installs it)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("clock read under valgrind"),
        "the run under valgrind failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
}
