//! `FileStore`: the embedded default [`SecretStore`], one directory on a local file system.
//!
//! # Layout
//!
//! Each [`StoreKey`] maps to one file below the root: every segment `S` but the last becomes a
//! directory `S.d`, the last becomes a file `S.v`. Key segments never contain `.`, so the mapping
//! is injective, no key can name `.` or `..`, and a key can be a value and a parent at once
//! (`a.v` next to `a.d/`). The root also holds `.lock` (the store lock) and `.counter` (the
//! version counter); temporary files are named `.<random>.tmp`. Nothing else is written.
//!
//! ```text
//! <root>/.lock
//! <root>/.counter
//! <root>/pleo-auth.d/v1.d/tenants.d/acme.v
//! ```
//!
//! # Files
//!
//! A value file holds a 21-byte header, the value, and a CRC-32 of everything before it
//! (integers big-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `PAFS` |
//! | 1 | format version, `1` |
//! | 8 | the value's version (from the store's counter) |
//! | 8 | the value's length `n` |
//! | n | the value |
//! | 4 | CRC-32 (IEEE) of the header and the value |
//!
//! A file that is truncated, garbled or fails its checksum is an [`ErrorKind::Corrupt`] error
//! naming the key, never "absent"; a newer format version is [`ErrorKind::UnsupportedSchema`].
//! `.counter` uses the same format with an empty value; its version is the last one handed out.
//!
//! # Guarantees
//!
//! - Writes are atomic and durable: a temporary file in the target directory is written and
//!   fsynced, renamed over the target, and the directory is fsynced. A reader sees the old value
//!   or the new one, never a mix.
//! - Compare-and-swap holds across processes: `put` and `delete` run under an exclusive OS file
//!   lock on `<root>/.lock` (`flock` on Linux), waiting at most [`FileStore::with_lock_timeout`]
//!   for it. The lock is released when its holder exits, however it exits. Reads take no lock.
//! - A `put` or `delete` whose future is dropped still runs to completion on Tokio's blocking
//!   pool; it never stops half-way.
//! - Versions come from one counter per store, persisted before the value, so a key deleted and
//!   written again never gets an old version back.
//! - Files are created `0600` and directories `0700`, set explicitly rather than through the
//!   umask. [`FileStore::open`] creates a missing root `0700` and refuses an existing root that
//!   its group or other users can access.
//!
//! Use a local file system: file locks on network file systems may not exclude other hosts. Keys
//! whose path exceeds the operating system's limit (4096 bytes on Linux) are refused with
//! [`ErrorKind::InvalidInput`]. A process that crashes mid-write can leave a `.tmp` file behind;
//! it is never read as a value and can be removed. Do not delete `.lock` while the store is in
//! use: a process that creates it again would lock a different file.
//!
//! # Example
//!
//! ```
//! use pleo_auth_core::{Precondition, SecretBytes, SecretStore, StoreKey};
//! use pleo_auth_stores::file::FileStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> pleo_auth_core::Result<()> {
//! # let dir = tempfile::tempdir().expect("temporary directory");
//! let store = FileStore::open(dir.path().join("secrets"))?;
//! let key = StoreKey::from_parts(["example", "greeting"])?;
//! let v1 = store
//!     .put(&key, SecretBytes::new(b"hello".to_vec()), Precondition::Absent)
//!     .await?;
//! let v2 = store
//!     .put(&key, SecretBytes::new(b"hello again".to_vec()), Precondition::Version(v1))
//!     .await?;
//! let stored = store.get(&key).await?.expect("written above");
//! assert_eq!(stored.value.expose_secret(), b"hello again");
//! assert_eq!(stored.version, v2);
//! # Ok(())
//! # }
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pleo_auth_core::{
    Backoff, Error, ErrorKind, Precondition, Result, SecretBytes, SecretStore, StoreKey, Version,
    Versioned, check_precondition, random_urlsafe,
};
use zeroize::Zeroizing;

const BACKEND: &str = "file";

const MAGIC: &[u8; 4] = b"PAFS";
const FORMAT_VERSION: u8 = 1;
const HEADER_LEN: usize = 4 + 1 + 8 + 8;
const TRAILER_LEN: usize = 4;

const LOCK_FILE: &str = ".lock";
const COUNTER_FILE: &str = ".counter";
const VALUE_SUFFIX: &str = ".v";
const DIR_SUFFIX: &str = ".d";
const TEMP_SUFFIX: &str = ".tmp";

const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;

/// How long `put` and `delete` wait for the store lock unless told otherwise.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// A [`SecretStore`] in one directory of a local file system, safe to share between threads,
/// tasks and processes. See the [module documentation](self) for the layout and guarantees.
#[derive(Debug, Clone)]
pub struct FileStore {
    root: Arc<Path>,
    lock_timeout: Duration,
}

impl FileStore {
    /// Opens the store in `root`, creating the directory (mode `0700`) and its parents if missing.
    ///
    /// This does blocking file I/O; call it once at startup, or from `spawn_blocking`.
    ///
    /// Fails with [`ErrorKind::Config`] if `root` is not a directory or if its group or other
    /// users have any access to it (on Unix): a store of credentials must be private to its owner.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root: PathBuf = root.into();
        match fs::metadata(&root) {
            Ok(meta) => check_root(&root, &meta)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => create_root(&root)?,
            Err(e) => return Err(io_error(e, "cannot inspect the store root")),
        }
        lock_file(&root).map_err(|e| io_error(e, "cannot create the store lock file"))?;
        Ok(Self {
            root: root.into(),
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
        })
    }

    /// Sets how long `put` and `delete` wait for the store lock before failing with a retryable
    /// [`ErrorKind::Unavailable`] error (default [`DEFAULT_LOCK_TIMEOUT`]).
    pub fn with_lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file that holds the value of `key`; always below [`FileStore::root`].
    pub fn path_of(&self, key: &StoreKey) -> PathBuf {
        value_path(&self.root, key)
    }

    async fn blocking<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Path, Duration) -> Result<T> + Send + 'static,
    {
        let root = self.root.clone();
        let timeout = self.lock_timeout;
        tokio::task::spawn_blocking(move || {
            check_root_present(&root)?;
            work(&root, timeout)
        })
        .await
        .map_err(|e| {
            Error::new(ErrorKind::Unexpected, "file store task failed")
                .with_backend(BACKEND)
                .with_source(e)
        })?
    }
}

#[async_trait]
impl SecretStore for FileStore {
    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn get(&self, key: &StoreKey) -> Result<Option<Versioned>> {
        let key = key.clone();
        self.blocking(move |root, _| {
            Ok(
                read_value(&value_path(root, &key), &key)?.map(|(version, value)| Versioned {
                    value,
                    version: Version::from_u64(version),
                }),
            )
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn put(
        &self,
        key: &StoreKey,
        value: SecretBytes,
        precondition: Precondition,
    ) -> Result<Version> {
        let key = key.clone();
        self.blocking(move |root, timeout| put_locked(root, timeout, &key, &value, &precondition))
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn delete(&self, key: &StoreKey, precondition: Precondition) -> Result<()> {
        if precondition == Precondition::Absent {
            return Err(Error::invalid_input("delete cannot require absence").with_backend(BACKEND));
        }
        let key = key.clone();
        self.blocking(move |root, timeout| delete_locked(root, timeout, &key, &precondition))
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, prefix = %prefix))]
    async fn list(&self, prefix: &StoreKey) -> Result<Vec<StoreKey>> {
        let prefix = prefix.clone();
        self.blocking(move |root, _| list_below(root, &prefix))
            .await
    }

    /// Reads every file in one task on Tokio's blocking pool, instead of one task per key.
    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, keys = keys.len()))]
    async fn get_many(&self, keys: &[StoreKey]) -> Result<Vec<Option<Versioned>>> {
        let keys = keys.to_vec();
        self.blocking(move |root, _| {
            keys.iter()
                .map(|key| {
                    Ok(
                        read_value(&value_path(root, key), key)?.map(|(version, value)| {
                            Versioned {
                                value,
                                version: Version::from_u64(version),
                            }
                        }),
                    )
                })
                .collect()
        })
        .await
    }
}

fn put_locked(
    root: &Path,
    timeout: Duration,
    key: &StoreKey,
    value: &SecretBytes,
    precondition: &Precondition,
) -> Result<Version> {
    let _lock = lock_store(root, timeout)?;
    let path = value_path(root, key);
    let current = match read_value(&path, key) {
        Ok(found) => found.map(|(version, _)| version),
        // An unconditional write may replace a value that cannot be read.
        Err(e) if *precondition == Precondition::None && is_unreadable(&e) => None,
        Err(e) => return Err(e),
    };
    check_precondition(
        current.map(Version::from_u64).as_ref(),
        precondition,
        BACKEND,
    )?;
    let version = next_version(root, current)?;
    let dir = create_parents(root, key)?;
    let file = path.file_name().expect("value paths end in a file name");
    write_atomic(&dir, file, &encode(version, value.expose_secret()))
        .map_err(|e| io_error(e, format!("cannot write key {key}")))?;
    Ok(Version::from_u64(version))
}

fn delete_locked(
    root: &Path,
    timeout: Duration,
    key: &StoreKey,
    precondition: &Precondition,
) -> Result<()> {
    let _lock = lock_store(root, timeout)?;
    let path = value_path(root, key);
    if let Precondition::Version(_) = precondition {
        let current = read_value(&path, key)?.map(|(version, _)| Version::from_u64(version));
        check_precondition(current.as_ref(), precondition, BACKEND)?;
    }
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if is_missing(&e) => return Ok(()),
        Err(e) => return Err(io_error(e, format!("cannot delete key {key}"))),
    }
    let mut dir = path
        .parent()
        .expect("value paths have a parent")
        .to_path_buf();
    sync_dir(&dir).map_err(|e| io_error(e, format!("cannot delete key {key}")))?;
    // Remove parents left empty, up to the root. Puts hold the same lock, so none is filling them.
    while dir.as_path() != root && fs::remove_dir(&dir).is_ok() {
        dir.pop();
        if let Err(e) = sync_dir(&dir) {
            tracing::debug!(error = %e, "fsync after removing an empty directory failed");
        }
    }
    Ok(())
}

fn list_below(root: &Path, prefix: &StoreKey) -> Result<Vec<StoreKey>> {
    let mut found = Vec::new();
    let mut pending = vec![(dir_path(root, prefix), prefix.as_str().to_owned())];
    while let Some((dir, key)) = pending.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if is_missing(&e) => continue,
            Err(e) => return Err(io_error(e, format!("cannot list keys below {prefix}"))),
        };
        for entry in entries {
            let entry =
                entry.map_err(|e| io_error(e, format!("cannot list keys below {prefix}")))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let (segment, is_dir) = if let Some(s) = name.strip_suffix(DIR_SUFFIX) {
                (s, true)
            } else if let Some(s) = name.strip_suffix(VALUE_SUFFIX) {
                (s, false)
            } else {
                continue;
            };
            let Ok(child) = StoreKey::parse(&format!("{key}/{segment}")) else {
                continue;
            };
            let file_type = entry
                .file_type()
                .map_err(|e| io_error(e, format!("cannot list keys below {prefix}")))?;
            if is_dir && file_type.is_dir() {
                pending.push((entry.path(), child.as_str().to_owned()));
            } else if !is_dir && !file_type.is_dir() {
                found.push(child);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Reads and checks a value file: `None` when there is no file.
fn read_value(path: &Path, key: &StoreKey) -> Result<Option<(u64, SecretBytes)>> {
    let bytes = match read_file(path) {
        Ok(bytes) => bytes,
        Err(e) if is_missing(&e) => return Ok(None),
        Err(e) => return Err(io_error(e, format!("cannot read key {key}"))),
    };
    let (version, value) =
        decode(&bytes).map_err(|problem| problem.error(&format!("key {key}")))?;
    Ok(Some((version, SecretBytes::new(value.to_vec()))))
}

fn read_file(path: &Path) -> io::Result<Zeroizing<Vec<u8>>> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut bytes = Zeroizing::new(Vec::with_capacity(
        usize::try_from(len).unwrap_or(0).saturating_add(1),
    ));
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Takes the next version from the store's counter and persists it before it is used.
fn next_version(root: &Path, current: Option<u64>) -> Result<u64> {
    let counter = match read_file(&root.join(COUNTER_FILE)) {
        Ok(bytes) => {
            decode(&bytes)
                .map_err(|problem| problem.error("the version counter"))?
                .0
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(io_error(e, "cannot read the version counter")),
    };
    // The key's own version bounds the counter too, should the counter ever be restored from an
    // older backup.
    let next = counter
        .max(current.unwrap_or(0))
        .checked_add(1)
        .ok_or_else(|| Error::corrupt("the version counter is exhausted").with_backend(BACKEND))?;
    write_atomic(root, COUNTER_FILE.as_ref(), &encode(next, &[]))
        .map_err(|e| io_error(e, "cannot update the version counter"))?;
    Ok(next)
}

/// Creates the directories of `key`'s parents (mode `0700`) and returns the innermost.
fn create_parents(root: &Path, key: &StoreKey) -> Result<PathBuf> {
    let mut dir = root.to_path_buf();
    let segments: Vec<&str> = key.segments().collect();
    for segment in &segments[..segments.len() - 1] {
        dir.push(format!("{segment}{DIR_SUFFIX}"));
        match create_private_dir(&dir) {
            Ok(()) => {
                let parent = dir.parent().expect("a created directory has a parent");
                sync_dir(parent).map_err(|e| io_error(e, format!("cannot write key {key}")))?;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(e) => return Err(io_error(e, format!("cannot write key {key}"))),
        }
    }
    Ok(dir)
}

/// Writes `bytes` to `dir/name` atomically and durably.
fn write_atomic(dir: &Path, name: &std::ffi::OsStr, bytes: &[u8]) -> io::Result<()> {
    let path = dir.join(format!(".{}{TEMP_SUFFIX}", random_urlsafe(12)));
    let mut file = create_private_file(&path)?;
    let mut temp = TempFile(Some(path));
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    let path = temp.0.take().expect("set above");
    if let Err(e) = fs::rename(&path, dir.join(name)) {
        temp.0 = Some(path);
        return Err(e);
    }
    sync_dir(dir)
}

/// A temporary file, removed when dropped unless it was renamed (taken) first.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take()
            && let Err(e) = fs::remove_file(path)
        {
            tracing::debug!(error = %e, "removing a temporary file failed");
        }
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Holds the store lock until dropped.
fn lock_store(root: &Path, timeout: Duration) -> Result<File> {
    let file = lock_file(root).map_err(|e| io_error(e, "cannot open the store lock"))?;
    const PAUSE: Backoff =
        Backoff::new(Duration::from_micros(50), Duration::from_millis(5)).without_jitter();
    let deadline = Instant::now() + timeout;
    let mut attempt = 0u32;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                attempt = attempt.saturating_add(1);
                std::thread::sleep(PAUSE.delay(attempt));
            }
            Err(fs::TryLockError::WouldBlock) => {
                return Err(Error::unavailable("timed out waiting for the store lock")
                    .with_backend(BACKEND));
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(io_error(e, "cannot take the store lock"));
            }
        }
    }
}

fn lock_file(root: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true);
    private_mode(&mut options);
    options.open(root.join(LOCK_FILE))
}

fn value_path(root: &Path, key: &StoreKey) -> PathBuf {
    let mut path = root.to_path_buf();
    let mut segments = key.segments().peekable();
    while let Some(segment) = segments.next() {
        let suffix = if segments.peek().is_some() {
            DIR_SUFFIX
        } else {
            VALUE_SUFFIX
        };
        path.push(format!("{segment}{suffix}"));
    }
    path
}

fn dir_path(root: &Path, prefix: &StoreKey) -> PathBuf {
    let mut path = root.to_path_buf();
    for segment in prefix.segments() {
        path.push(format!("{segment}{DIR_SUFFIX}"));
    }
    path
}

fn encode(version: u64, value: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(HEADER_LEN + value.len() + TRAILER_LEN));
    out.extend_from_slice(MAGIC);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&(value.len() as u64).to_be_bytes());
    out.extend_from_slice(value);
    let crc = crc32(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// Why a file could not be decoded.
enum Problem {
    Corrupt(&'static str),
    NewerFormat(u8),
}

impl Problem {
    fn error(self, what: &str) -> Error {
        match self {
            Problem::Corrupt(why) => {
                Error::corrupt(format!("stored file of {what} is corrupt ({why})"))
            }
            Problem::NewerFormat(v) => Error::new(
                ErrorKind::UnsupportedSchema,
                format!("stored file of {what} has unknown format version {v}"),
            ),
        }
        .with_backend(BACKEND)
    }
}

fn decode(bytes: &[u8]) -> Result<(u64, &[u8]), Problem> {
    if bytes.len() < HEADER_LEN + TRAILER_LEN {
        return Err(Problem::Corrupt("too short"));
    }
    if &bytes[..4] != MAGIC {
        return Err(Problem::Corrupt("bad magic"));
    }
    match bytes[4] {
        FORMAT_VERSION => {}
        0 => return Err(Problem::Corrupt("bad format version")),
        v => return Err(Problem::NewerFormat(v)),
    }
    let version = u64::from_be_bytes(bytes[5..13].try_into().expect("8 bytes"));
    let len = u64::from_be_bytes(bytes[13..21].try_into().expect("8 bytes"));
    if Some(bytes.len())
        != usize::try_from(len)
            .ok()
            .and_then(|n| n.checked_add(HEADER_LEN + TRAILER_LEN))
    {
        return Err(Problem::Corrupt("length does not match"));
    }
    let (body, trailer) = bytes.split_at(bytes.len() - TRAILER_LEN);
    if crc32(body).to_be_bytes() != trailer {
        return Err(Problem::Corrupt("checksum does not match"));
    }
    if version == 0 {
        return Err(Problem::Corrupt("version zero"));
    }
    Ok((version, &body[HEADER_LEN..]))
}

/// CRC-32 (IEEE 802.3, reflected, as in zlib and PNG).
fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut bit = 0;
            while bit < 8 {
                c = if c & 1 == 1 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                bit += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    !bytes.iter().fold(!0u32, |crc, &b| {
        TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8)
    })
}

/// The store's directory must still be there: if it was removed or replaced, every key would
/// read as absent, and a reader must never take "the store is gone" for "no credential".
fn check_root_present(root: &Path) -> Result<()> {
    match fs::metadata(root) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(Error::unavailable(format!(
            "the store directory {} is not a directory",
            root.display()
        ))
        .with_backend(BACKEND)),
        Err(e) => Err(io_error(
            e,
            format!("the store directory {} cannot be read", root.display()),
        )),
    }
}

fn is_missing(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

fn is_unreadable(e: &Error) -> bool {
    matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::UnsupportedSchema)
}

fn io_error(e: io::Error, message: impl Into<String>) -> Error {
    let kind = match e.kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            ErrorKind::PermissionDenied
        }
        io::ErrorKind::InvalidFilename => ErrorKind::InvalidInput,
        _ => ErrorKind::Unavailable,
    };
    Error::new(kind, message)
        .with_backend(BACKEND)
        .with_source(e)
}

fn create_root(root: &Path) -> Result<()> {
    if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)
            .map_err(|e| io_error(e, "cannot create the parent of the store root"))?;
    }
    match create_private_dir(root) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let meta =
                fs::metadata(root).map_err(|e| io_error(e, "cannot inspect the store root"))?;
            check_root(root, &meta)
        }
        Err(e) => Err(io_error(e, "cannot create the store root")),
    }
}

fn check_root(root: &Path, meta: &fs::Metadata) -> Result<()> {
    if !meta.is_dir() {
        return Err(Error::new(
            ErrorKind::Config,
            format!("store root {} is not a directory", root.display()),
        )
        .with_backend(BACKEND));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "store root {} is accessible by group or others; make it private (chmod 700)",
                    root.display()
                ),
            )
            .with_backend(BACKEND));
        }
    }
    Ok(())
}

fn create_private_dir(path: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        builder.mode(DIR_MODE);
        builder.create(path)?;
        accept_private(
            fs::set_permissions(path, fs::Permissions::from_mode(DIR_MODE)),
            || fs::metadata(path),
        )
    }
    #[cfg(not(unix))]
    {
        builder.create(path)
    }
}

fn create_private_file(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    private_mode(&mut options);
    let file = options.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        accept_private(
            file.set_permissions(fs::Permissions::from_mode(FILE_MODE)),
            || file.metadata(),
        )?;
    }
    Ok(file)
}

/// The result of setting a mode, where a file system that keeps no permissions of its own (a
/// FAT volume through FUSE answers `ENOSYS`) counts as success if the mode it reports is private
/// to the owner already (its mount options decide it); otherwise the error stands.
#[cfg(unix)]
fn accept_private(
    set: io::Result<()>,
    metadata: impl FnOnce() -> io::Result<fs::Metadata>,
) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    match set {
        Err(e) if e.kind() == io::ErrorKind::Unsupported => {
            if metadata()?.permissions().mode() & 0o077 == 0 {
                Ok(())
            } else {
                Err(e)
            }
        }
        other => other,
    }
}

fn private_mode(options: &mut OpenOptions) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(FILE_MODE);
    }
    #[cfg(not(unix))]
    let _ = options;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn encode_and_decode_round_trip() {
        let bytes = encode(42, b"value");
        assert_eq!(bytes.len(), HEADER_LEN + 5 + TRAILER_LEN);
        let (version, value) = decode(&bytes).ok().expect("decodes");
        assert_eq!((version, value), (42, &b"value"[..]));
    }

    #[test]
    fn every_single_byte_change_is_detected() {
        let bytes = encode(7, b"some value");
        for i in 0..bytes.len() {
            let mut garbled = bytes.to_vec();
            garbled[i] ^= 0x01;
            assert!(decode(&garbled).is_err(), "flip at byte {i} went unnoticed");
        }
        for len in 0..bytes.len() {
            assert!(
                decode(&bytes[..len]).is_err(),
                "truncation to {len} went unnoticed"
            );
        }
    }

    #[test]
    fn keys_map_to_suffixed_segments() {
        let root = Path::new("/r");
        let key = StoreKey::parse("a/b/c").unwrap();
        assert_eq!(value_path(root, &key), Path::new("/r/a.d/b.d/c.v"));
        assert_eq!(dir_path(root, &key), Path::new("/r/a.d/b.d/c.d"));
    }
}
