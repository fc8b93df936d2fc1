//! Linux process helpers: signals through rustix and process facts from `/proc`.

use std::thread::sleep;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::process::{Pid, Signal, kill_process, kill_process_group};

use crate::Result;

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
#[derive(Debug, Clone, Copy)]
enum Target {
    /// A process that leads its own group: the whole group.
    Group(u32),
    /// A single process.
    Process(u32),
}

impl Target {
    /// Sends `signal` to this target; a target that no longer exists is not an error.
    fn signal(self, signal: Signal) -> Result<()> {
        let (Self::Group(raw) | Self::Process(raw)) = self;
        let pid = i32::try_from(raw)
            .ok()
            .and_then(Pid::from_raw)
            .ok_or_else(|| format!("pid {raw} is out of range"))?;
        let sent = match self {
            Self::Group(_) => kill_process_group(pid, signal),
            Self::Process(_) => kill_process(pid, signal),
        };
        match sent {
            // ESRCH: nothing left to signal.
            Ok(()) | Err(Errno::SRCH) => Ok(()),
            Err(error) => Err(format!("cannot send {signal:?} to {self:?}: {error}")),
        }
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
    target.signal(Signal::TERM)?;
    if target.wait_gone(grace) {
        return Ok(Ended::Terminated);
    }
    target.signal(Signal::KILL)?;
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

    /// Starts `script` under `sh` as the leader of a new process group.
    fn spawn_group(script: &str) -> std::process::Child {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("sh")
            .args(["-c", script])
            .process_group(0)
            .spawn()
            .unwrap()
    }

    #[test]
    fn terminate_ends_a_whole_group_with_sigterm() {
        let mut child = spawn_group("sleep 30 & sleep 30");
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(5);
        while group_members(pid).len() < 2 && Instant::now() < deadline {
            sleep(Duration::from_millis(20));
        }
        assert!(group_members(pid).len() >= 2, "the group never started");
        assert_eq!(
            terminate(pid, Duration::from_secs(5)),
            Ok(Ended::Terminated)
        );
        assert!(group_members(pid).is_empty());
        child.wait().unwrap();
    }

    #[test]
    fn terminate_kills_what_ignores_sigterm() {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sh")
            .args(["-c", "trap '' TERM; echo ready; exec sleep 30"])
            .process_group(0)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "ready\n", "the trap is in place");
        assert_eq!(
            terminate(pid, Duration::from_millis(300)),
            Ok(Ended::Killed)
        );
        assert!(!is_alive(pid));
        child.wait().unwrap();
        // Signalling a process that is gone is not an error.
        assert_eq!(
            terminate(pid, Duration::from_millis(100)),
            Ok(Ended::Terminated)
        );
    }

    #[test]
    fn sees_itself_alive() {
        let me = std::process::id();
        assert!(is_alive(me));
        assert!(cmdline(me).is_some_and(|line| !line.is_empty()));
    }
}
