//! The recovery folder: rotated token pairs the store did not take before a command ended.
//!
//! Pleo invalidates the old refresh token the moment it answers a refresh, so a rotated pair
//! that dies with the process burns the grant. Every command that may refresh flushes its
//! pending pairs before it exits; pairs the store still refuses are written here (one JSON
//! line each, in a file only the user can read), the command exits with code 7 naming the
//! store and the file, and the next run writes them to the store before it does anything else.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use pleo_auth::oauth::{PendingPair, Recovered, TokenManager};
use zeroize::Zeroizing;

use super::exit::{CliError, Code};

/// The environment variable that overrides the folder (tests, and users who want it elsewhere).
pub const DIR_VAR: &str = "PLEO_STATE_DIR";

const PREFIX: &str = "recovery-";
const SUFFIX: &str = ".jsonl";

/// The recovery folder: `$PLEO_STATE_DIR`, else `pleo-auth/` in the user's state directory
/// (`$XDG_STATE_HOME`, `~/.local/state`), else in the data directory.
pub fn dir() -> Result<PathBuf, CliError> {
    if let Some(dir) = std::env::var_os(DIR_VAR).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    dirs::state_dir()
        .or_else(dirs::data_dir)
        .map(|d| d.join("pleo-auth"))
        .ok_or_else(|| {
            CliError::usage("no state directory is known for this user")
                .hint(format!("set {DIR_VAR} to a private directory"))
        })
}

/// Writes `pairs` to a new recovery file (0600, in a 0700 folder) and returns its path.
pub fn save(pairs: &[PendingPair]) -> Result<PathBuf, CliError> {
    let dir = dir()?;
    create_private_dir(&dir)?;
    let mut lines = Zeroizing::new(Vec::new());
    for pair in pairs {
        let json = pair
            .to_recovery_json()
            .map_err(|e| CliError::oauth("encoding a rotated token pair failed", e))?;
        lines.extend_from_slice(json.expose_secret());
        lines.push(b'\n');
    }
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let path = dir.join(format!("{PREFIX}{millis}-{}{SUFFIX}", std::process::id()));
    let failed = |e: std::io::Error| {
        CliError::new(Code::Store, "writing the recovery file failed").with_source(e)
    };
    let mut file = tempfile::NamedTempFile::new_in(&dir).map_err(failed)?;
    restrict(file.path()).map_err(failed)?;
    file.write_all(&lines).map_err(failed)?;
    file.as_file().sync_all().map_err(failed)?;
    file.persist(&path).map_err(|e| failed(e.error))?;
    Ok(path)
}

/// Writes the pairs of every recovery file to the store through `manager`, before the command
/// runs. A file is removed once nothing in it is left to write; pairs of another environment
/// or client, and pairs the store still refuses, stay. Problems are reported on stderr and
/// never stop the command.
pub async fn apply(manager: &TokenManager) {
    let Ok(dir) = dir() else {
        return;
    };
    let Ok(entries) = fs::read_dir(&dir) else {
        return;
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(SUFFIX))
        })
        .collect();
    files.sort();
    for file in files {
        if let Err(err) = apply_file(manager, &file).await {
            errln!("warning: {err}");
        }
    }
}

async fn apply_file(manager: &TokenManager, file: &Path) -> Result<(), CliError> {
    let shown = file.display();
    let bytes = Zeroizing::new(fs::read(file).map_err(|e| {
        CliError::new(Code::Store, format!("reading {shown} failed")).with_source(e)
    })?);
    let mut keep: Vec<&[u8]> = Vec::new();
    let mut pairs = Vec::new();
    let mut lines = Vec::new();
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        match PendingPair::from_recovery_json(line) {
            Ok(pair) => {
                pairs.push(pair);
                lines.push(line);
            }
            Err(_) => {
                errln!("warning: {shown} has an unreadable line; it is kept");
                keep.push(line);
            }
        }
    }
    let mut stored = 0;
    for ((subject, result), line) in manager.recover(pairs).await.into_iter().zip(lines) {
        match result {
            Ok(Recovered::Stored) => stored += 1,
            Ok(Recovered::Dropped) => errln!(
                "warning: a recovered token pair of {subject} was not written: the store holds a newer one"
            ),
            Ok(_) => keep.push(line),
            Err(err) => {
                errln!(
                    "warning: the recovered token pair of {subject} could not be written yet: {err}"
                );
                keep.push(line);
            }
        }
    }
    if stored > 0 {
        errln!("Applied {stored} rotated token pair(s) from {shown}.");
    }
    let failed = |e: std::io::Error| {
        CliError::new(Code::Store, format!("updating {shown} failed")).with_source(e)
    };
    if keep.is_empty() {
        return fs::remove_file(file).map_err(failed);
    }
    let mut rest = Zeroizing::new(Vec::new());
    for line in keep {
        rest.extend_from_slice(line);
        rest.push(b'\n');
    }
    let dir = file.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(failed)?;
    restrict(tmp.path()).map_err(failed)?;
    tmp.write_all(&rest).map_err(failed)?;
    tmp.as_file().sync_all().map_err(failed)?;
    tmp.persist(file).map_err(|e| failed(e.error))?;
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<(), CliError> {
    let failed = |e: std::io::Error| {
        CliError::new(Code::Store, format!("creating {} failed", dir.display())).with_source(e)
    };
    fs::create_dir_all(dir).map_err(failed)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(failed)?;
    }
    Ok(())
}

/// Makes a file readable by its owner only.
fn restrict(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}
