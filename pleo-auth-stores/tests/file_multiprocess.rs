//! The file store across OS processes: compare-and-swap and `StoreLease` exclusion.
//!
//! Each test re-executes this test binary (`std::env::current_exe()`) with a filter naming only
//! itself (`<name> --exact`) and an environment variable that gives the child its role, so no
//! extra binary is needed and the same command works under `cargo test` and `cargo nextest`.
#![cfg(feature = "file")]

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pleo_auth_core::{
    ErrorKind, Lease, Precondition, SecretBytes, SecretStore, StoreKey, StoreLease,
};
use pleo_auth_stores::file::FileStore;

/// `<test name>|<child index>|<store directory>` in a child process.
const CHILD_VAR: &str = "PLEO_AUTH_FILE_TEST_CHILD";
const PROCESSES: usize = 4;

fn counter_key() -> StoreKey {
    StoreKey::parse("race/counter").unwrap()
}

fn lease_key() -> StoreKey {
    StoreKey::parse("race/lease").unwrap()
}

/// This process's role if it is a child spawned for `test`.
fn child_role(test: &str) -> Option<(usize, PathBuf)> {
    let value = std::env::var(CHILD_VAR).ok()?;
    let mut parts = value.splitn(3, '|');
    if parts.next()? != test {
        return None;
    }
    let index = parts.next()?.parse().ok()?;
    Some((index, PathBuf::from(parts.next()?)))
}

fn spawn_children(test: &str, dir: &Path) -> Vec<Child> {
    let exe = std::env::current_exe().expect("path of the test binary");
    (0..PROCESSES)
        .map(|i| {
            Command::new(&exe)
                .args([test, "--exact", "--nocapture", "--test-threads=1"])
                .env(CHILD_VAR, format!("{test}|{i}|{}", dir.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn a child process")
        })
        .collect()
}

/// Lets the children start together once all are up, and waits for them to succeed.
fn run_children(test: &str, dir: &Path) {
    let mut children = spawn_children(test, dir);
    let deadline = Instant::now() + Duration::from_secs(60);
    while (0..PROCESSES).any(|i| !dir.join(format!("ready-{i}")).exists()) {
        for child in &mut children {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("a child exited before the start: {status}");
            }
        }
        assert!(Instant::now() < deadline, "children did not get ready");
        std::thread::sleep(Duration::from_millis(5));
    }
    fs::write(dir.join("go"), b"").unwrap();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "child {i} failed: {}\n{stdout}\n{stderr}",
            out.status
        );
        assert!(
            stdout.contains("1 passed"),
            "child {i} ran exactly its test:\n{stdout}"
        );
    }
}

/// In a child: announce readiness and wait for the start signal.
fn await_start(index: usize, dir: &Path) {
    fs::write(dir.join(format!("ready-{index}")), b"").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dir.join("go").exists() {
        assert!(Instant::now() < deadline, "no start signal");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn read_results(dir: &Path) -> Vec<String> {
    (0..PROCESSES)
        .map(|i| fs::read_to_string(dir.join(format!("result-{i}"))).expect("child result"))
        .collect()
}

fn number(value: &SecretBytes) -> u64 {
    std::str::from_utf8(value.expose_secret())
        .unwrap()
        .parse()
        .unwrap()
}

const INCREMENTS: u64 = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_swap_holds_across_processes() {
    const TEST: &str = "compare_and_swap_holds_across_processes";
    if let Some((index, dir)) = child_role(TEST) {
        let store = FileStore::open(dir.join("store")).unwrap();
        await_start(index, &dir);
        let (mut done, mut conflicts) = (0, 0u64);
        while done < INCREMENTS {
            let current = store.get(&counter_key()).await.unwrap().expect("seeded");
            let next = number(&current.value) + 1;
            let value = SecretBytes::new(next.to_string().into_bytes());
            match store
                .put(
                    &counter_key(),
                    value,
                    Precondition::Version(current.version),
                )
                .await
            {
                Ok(_) => done += 1,
                Err(e) if e.kind() == ErrorKind::Conflict => conflicts += 1,
                Err(e) => panic!("unexpected error: {e:?}"),
            }
        }
        fs::write(dir.join(format!("result-{index}")), conflicts.to_string()).unwrap();
        return;
    }

    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path().join("store")).unwrap();
    store
        .put(
            &counter_key(),
            SecretBytes::new(b"0".to_vec()),
            Precondition::Absent,
        )
        .await
        .unwrap();
    let started = Instant::now();
    run_children(TEST, dir.path());
    let elapsed = started.elapsed();

    let last = store.get(&counter_key()).await.unwrap().unwrap();
    assert_eq!(
        number(&last.value),
        INCREMENTS * PROCESSES as u64,
        "no increment was lost"
    );
    let conflicts: u64 = read_results(dir.path())
        .iter()
        .map(|r| r.parse::<u64>().unwrap())
        .sum();
    println!("{PROCESSES} processes x {INCREMENTS} increments: {conflicts} conflicts, {elapsed:?}");
    assert!(conflicts > 0, "the processes really raced");
}

const CRITICAL_SECTIONS: u64 = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_lease_excludes_across_processes() {
    const TEST: &str = "store_lease_excludes_across_processes";
    if let Some((index, dir)) = child_role(TEST) {
        let store = Arc::new(FileStore::open(dir.join("store")).unwrap());
        let lease = StoreLease::new(store.clone());
        await_start(index, &dir);
        let (mut fencings, mut refused) = (Vec::new(), 0u64);
        while (fencings.len() as u64) < CRITICAL_SECTIONS {
            let Some(guard) = lease
                .acquire(&lease_key(), Duration::from_secs(30))
                .await
                .unwrap()
            else {
                refused += 1;
                tokio::time::sleep(Duration::from_micros(200)).await;
                continue;
            };
            // Unconditional read-modify-write: only the lease keeps it from losing updates.
            let current = store.get(&counter_key()).await.unwrap().expect("seeded");
            let next = number(&current.value) + 1;
            store
                .put(
                    &counter_key(),
                    SecretBytes::new(next.to_string().into_bytes()),
                    Precondition::None,
                )
                .await
                .unwrap();
            fencings.push(guard.fencing());
            guard.release().await.unwrap();
        }
        let fencings: Vec<String> = fencings.iter().map(u64::to_string).collect();
        fs::write(
            dir.join(format!("result-{index}")),
            format!("{refused} {}", fencings.join(",")),
        )
        .unwrap();
        return;
    }

    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path().join("store")).unwrap();
    store
        .put(
            &counter_key(),
            SecretBytes::new(b"0".to_vec()),
            Precondition::Absent,
        )
        .await
        .unwrap();
    run_children(TEST, dir.path());

    let total = CRITICAL_SECTIONS * PROCESSES as u64;
    let last = store.get(&counter_key()).await.unwrap().unwrap();
    assert_eq!(
        number(&last.value),
        total,
        "no update inside the lease was lost"
    );
    let mut refused = 0u64;
    let mut fencings = BTreeSet::new();
    for result in read_results(dir.path()) {
        let (r, list) = result.split_once(' ').unwrap();
        refused += r.parse::<u64>().unwrap();
        for f in list.split(',') {
            assert!(
                fencings.insert(f.parse::<u64>().unwrap()),
                "fencing {f} given twice"
            );
        }
    }
    assert_eq!(
        fencings.len() as u64,
        total,
        "one fencing number per holder"
    );
    assert!(refused > 0, "the processes really contended for the lease");
}
