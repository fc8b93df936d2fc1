//! The file store on a real case-insensitive file system: a FAT image (`mkfs.vfat` from
//! Debian's dosfstools) mounted with `fusefat` (Debian's fusefat, FUSE), as macOS, Windows and
//! FAT volumes compare names. Tenants that differ only in case keep apart, and a record read
//! under a name the file system folded onto another record's is refused.
//!
//! Why FUSE: the kernel this project's machines and CI run has neither the `vfat` driver nor
//! ext4 `casefold` (no `CONFIG_UNICODE`), and XFS's ASCII case-insensitive mode is not built in
//! either; FUSE is. `.ci/run` installs the two packages; the test runs as root (as CI does) and
//! fails, never skips, when a tool or `/dev/fuse` is missing.
#![cfg(all(feature = "file", target_os = "linux"))]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pleo_auth_core::{
    ClientId, CredentialKind, DynSecretStore, EnvironmentName, ErrorKind, LinkRequest,
    Precondition, RecordStoreExt, SecretStore, StoreKey, Subject, SystemClock, TenantId,
    TenantLink, TenantLinks, layout, testing,
};
use pleo_auth_stores::file::FileStore;

/// A FAT image mounted through FUSE, unmounted when dropped.
struct FatMount {
    dir: tempfile::TempDir,
}

fn run(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} cannot run ({e}): apt-get install dosfstools fusefat (as root)")
        });
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn mounted(mount: &Path) -> bool {
    std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .any(|line| line.split(' ').nth(1) == Some(mount.to_str().unwrap()))
}

impl FatMount {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("fat.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(32 * 1024 * 1024)
            .unwrap();
        run("mkfs.vfat", &[image.to_str().unwrap()]);
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).unwrap();
        run(
            "fusefat",
            &[
                "-o",
                "rw+",
                image.to_str().unwrap(),
                mount.to_str().unwrap(),
            ],
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !mounted(&mount) {
            assert!(Instant::now() < deadline, "the FAT image did not mount");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }
}

impl Drop for FatMount {
    fn drop(&mut self) {
        let mount = self.path();
        let _ = Command::new("fusermount")
            .args(["-u", mount.to_str().unwrap()])
            .output();
    }
}

fn company(n: u8) -> Subject {
    format!("urn:pleo:company:0c000000-0000-4000-8000-00000000000{n}")
        .parse()
        .unwrap()
}

fn request(tenant: &str, subject: Subject) -> LinkRequest {
    LinkRequest {
        environment: EnvironmentName::new("staging").unwrap(),
        tenant: TenantId::new(tenant).unwrap(),
        subject,
        credential_kind: CredentialKind::OAuth,
        client_id: ClientId::new("Client-A").unwrap(),
        relink: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_differing_in_case_stay_apart_on_a_case_insensitive_mount() {
    let fat = FatMount::new();
    // The mount really ignores case: a file written as one name is found under another.
    std::fs::write(fat.path().join("Probe"), b"x").unwrap();
    assert!(
        fat.path().join("PROBE").exists(),
        "the FAT mount should compare names without case"
    );

    let store: DynSecretStore = Arc::new(FileStore::open(fat.path().join("store")).unwrap());
    let links = TenantLinks::new(store.clone(), Arc::new(SystemClock));
    let env = EnvironmentName::new("staging").unwrap();
    for (tenant, n) in [("Acme", 1), ("acme", 2), ("ACME", 3)] {
        links.link(&request(tenant, company(n))).await.unwrap();
    }
    for (tenant, n) in [("Acme", 1), ("acme", 2), ("ACME", 3)] {
        let link = links
            .subject_for(&env, &TenantId::new(tenant).unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(link.subject, company(n), "{tenant}");
        assert_eq!(link.tenant.as_str(), tenant);
    }
    assert_eq!(links.list(&env).await.unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_file_system_folds_onto_another_key_is_refused() {
    let fat = FatMount::new();
    let store: DynSecretStore = Arc::new(FileStore::open(fat.path().join("store")).unwrap());
    let links = TenantLinks::new(store.clone(), Arc::new(SystemClock));
    let env = EnvironmentName::new("staging").unwrap();
    links.link(&request("Zeta", company(1))).await.unwrap();

    // A key that differs only in case from Zeta's (a lower-case escape, as a tool or an older
    // layout could write): the file system hands back Zeta's file for it.
    let zeta = layout::tenant_link(&env, &TenantId::new("Zeta").unwrap());
    assert!(zeta.as_str().ends_with("/%5Aeta"), "{zeta}");
    let folded = StoreKey::parse(&zeta.as_str().replace("%5A", "%5a")).unwrap();
    assert_ne!(folded, zeta);
    assert!(
        store.get(&folded).await.unwrap().is_some(),
        "the mount folds the two names onto one file"
    );
    let err = store.get_record::<TenantLink>(&folded).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyMismatch, "{err:?}");

    // A link rewritten to name another tenant is refused when read for its own tenant.
    let (mut link, version) = store
        .get_record::<TenantLink>(&zeta)
        .await
        .unwrap()
        .unwrap();
    link.tenant = TenantId::new("zeta").unwrap();
    store
        .put_record(&zeta, &link, Precondition::Version(version))
        .await
        .unwrap();
    let err = links
        .subject_for(&env, &TenantId::new("Zeta").unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyMismatch);
    assert!(
        links
            .subject_for(&env, &TenantId::new("zeta").unwrap())
            .await
            .unwrap()
            .is_none(),
        "zeta has no link of its own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_store_passes_the_store_suite_on_the_mount() {
    let fat = FatMount::new();
    let store = FileStore::open(fat.path().join("store")).unwrap();
    testing::conformance(Arc::new(store)).await;
}
