//! Prompts on the terminal that leave it as they found it, also when Ctrl-C ends them.
//!
//! Ctrl-C is caught for the whole command (`interrupted`), which drops the command's future:
//! a prompt's [`TerminalGuard`] is dropped with it and puts the terminal's settings back (echo
//! on), while the thread still blocked on the terminal is left behind for the process exit.

use std::fs::File;

use super::exit::CliError;

/// Resolves when the user presses Ctrl-C (SIGINT). Once called, SIGINT no longer kills the
/// process by itself.
pub async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        // No signal handler could be installed: never resolve, SIGINT keeps its default.
        std::future::pending::<()>().await;
    }
}

/// The terminal's settings when a prompt began, put back when the guard is dropped.
pub struct TerminalGuard {
    tty: File,
    saved: rustix::termios::Termios,
}

impl TerminalGuard {
    /// Saves the settings of the controlling terminal; `None` without one.
    pub fn save() -> Option<Self> {
        let tty = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/tty")
            .ok()?;
        let saved = rustix::termios::tcgetattr(&tty).ok()?;
        Some(Self { tty, saved })
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        let current = rustix::termios::tcgetattr(&self.tty);
        let changed = current.is_ok_and(|c| c.local_modes != self.saved.local_modes);
        let _ = rustix::termios::tcsetattr(
            &self.tty,
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
        if changed {
            // The prompt was cut short with echo off: end its line.
            use std::io::Write as _;
            let _ = (&self.tty).write_all(b"\n");
        }
    }
}

/// Asks for a secret on the terminal without echoing it. Ctrl-C ends the command with exit
/// 130 and echo back on.
pub async fn read_hidden(prompt: &'static str) -> Result<String, CliError> {
    let _guard = TerminalGuard::save();
    let answer = tokio::task::spawn_blocking(move || rpassword::prompt_password(prompt))
        .await
        .map_err(|e| CliError::other("the prompt failed").with_source(e))?;
    answer.map_err(read_failed)
}

/// A failed terminal read: Ctrl-C can also reach the reading thread, whose read then ends with
/// `Interrupted`; that is the same interruption.
fn read_failed(e: std::io::Error) -> CliError {
    if e.kind() == std::io::ErrorKind::Interrupted {
        return CliError::interrupted();
    }
    CliError::usage("reading from the terminal failed").with_source(e)
}

/// Asks for one line on the terminal (echoed). `None` at the end of input.
pub async fn read_line(prompt: &str) -> Result<Option<String>, CliError> {
    let _guard = TerminalGuard::save();
    errln!("{prompt}");
    let line = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|n| (n, line))
    })
    .await
    .map_err(|e| CliError::other("the prompt failed").with_source(e))?
    .map_err(read_failed)?;
    Ok(match line {
        (0, _) => None,
        (_, line) => Some(line),
    })
}
