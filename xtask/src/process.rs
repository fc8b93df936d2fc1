//! Linux process helpers: signals through `kill(2)` and process facts from `/proc`.

use std::io;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::Result;

/// `SIGTERM`: asks a process to shut down.
const SIGTERM: i32 = 15;
/// `SIGKILL`: ends a process at once.
const SIGKILL: i32 = 9;

// SAFETY: `kill(2)` from the C library that std links on Linux; it takes two integers, touches no
// memory of ours and reports failure through its return value and errno.
unsafe extern "C" {
    /// Sends signal `sig` to process `pid`, or to process group `-pid` when `pid` is negative.
    safe fn kill(pid: i32, sig: i32) -> i32;
}

/// Sends `signal` to `target` (a pid, or a negated process group id); a target that no longer
/// exists is not an error.
fn send(target: i32, signal: i32) -> Result<()> {
    if kill(target, signal) == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(3) {
        // ESRCH: nothing left to signal.
        Ok(())
    } else {
        Err(format!("cannot send signal {signal} to {target}: {error}"))
    }
}

/// The fields of `/proc/<pid>/stat` that the tasks use.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    /// The one-letter state: `R`, `S`, `Z` (zombie), ...
    state: char,
    /// The process group id.
    pgrp: u32,
}

/// Parses the text of `/proc/<pid>/stat`. The command name in parentheses may itself contain
/// spaces and parentheses, so fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some(Stat { state, pgrp })
}

/// The `/proc/<pid>/stat` facts of `pid`, or `None` if there is no such process.
fn stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Whether `pid` is a running process (a zombie, already exited, does not count).
pub fn is_alive(pid: u32) -> bool {
    stat(pid).is_some_and(|stat| !matches!(stat.state, 'Z' | 'X'))
}

/// The command line of `pid` with arguments separated by spaces, or `None` if there is no such
/// process.
pub fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        String::from_utf8_lossy(&raw)
            .split('\0')
            .filter(|arg| !arg.is_empty())
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// The running processes whose process group is `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            stat(pid).is_some_and(|stat| stat.pgrp == pgid && !matches!(stat.state, 'Z' | 'X'))
        })
        .collect()
}

/// How [`terminate`] ended a process.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// It exited after `SIGTERM`.
    Terminated,
    /// It was still running after the grace period and was killed with `SIGKILL`.
    Killed,
}

/// What [`terminate`] signals.
#[derive(Clone, Copy)]
enum Target {
    /// A process that leads its own group: the whole group.
    Group(u32),
    /// A single process.
    Process(u32),
}

impl Target {
    /// The argument of `kill(2)` that reaches this target.
    fn raw(self) -> Result<i32> {
        let (Self::Group(pid) | Self::Process(pid)) = self;
        let raw = i32::try_from(pid).map_err(|_| format!("pid {pid} is out of range"))?;
        Ok(if matches!(self, Self::Group(_)) {
            -raw
        } else {
            raw
        })
    }

    /// The processes of this target that still run.
    fn remaining(self) -> Vec<u32> {
        match self {
            Self::Group(pgid) => group_members(pgid),
            Self::Process(pid) if is_alive(pid) => vec![pid],
            Self::Process(_) => Vec::new(),
        }
    }

    /// Polls until no process of this target runs or `timeout` passes; returns whether none runs.
    fn wait_gone(self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.remaining().is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            sleep(Duration::from_millis(50));
        }
    }
}

/// Ends `pid` and, if it leads its own process group, every process in that group (a wrapper
/// script's children too): `SIGTERM`, then `SIGKILL` for whatever still runs after `grace`.
pub fn terminate(pid: u32, grace: Duration) -> Result<Ended> {
    let target = if stat(pid).is_some_and(|stat| stat.pgrp == pid) {
        Target::Group(pid)
    } else {
        Target::Process(pid)
    };
    send(target.raw()?, SIGTERM)?;
    if target.wait_gone(grace) {
        return Ok(Ended::Terminated);
    }
    send(target.raw()?, SIGKILL)?;
    if target.wait_gone(Duration::from_secs(5)) {
        Ok(Ended::Killed)
    } else {
        Err(format!(
            "processes {:?} still run after SIGKILL",
            target.remaining()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let text = "4242 (my (odd) prog) S 1 4242 4242 0 -1 4194560 100 0 0 0";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                state: 'S',
                pgrp: 4242
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn sees_itself_alive() {
        let me = std::process::id();
        assert!(is_alive(me));
        assert!(cmdline(me).is_some_and(|line| !line.is_empty()));
    }
}
