//! Terminal helpers: who a command is about, output that survives a closed pipe, colours, a
//! spinner, tables.

use std::fmt;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pleo_auth::{CompanyId, CredentialKind, PleoAuth, Subject, TenantId};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::exit::{CliError, Code};

/// Whether stdout is a terminal (a person reading, not a pipe).
pub fn stdout_is_terminal() -> bool {
    std::io::stdout().is_terminal()
}

/// Set once stdout turned out to be a closed pipe: later output is dropped.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes to stdout (the `outln!` macro). A closed pipe (`pleo-auth status | head -1`) ends the
/// output quietly instead of panicking; the command still finishes its work and exits with its
/// own code.
pub fn write_out(args: fmt::Arguments<'_>) {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if out.write_fmt(args).and_then(|()| out.flush()).is_err() {
        // Any failure to write stdout (a closed pipe, a full disk) ends the output; the
        // command's outcome is told by its exit code.
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
    }
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json(value: &serde_json::Value) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| CliError::other("writing JSON failed").with_source(e))?;
    outln!("{text}");
    Ok(())
}

/// Writes to stderr (the `errln!` macro), with colours only where stderr is a terminal that
/// wants them (`NO_COLOR`, `CLICOLOR`, `CLICOLOR_FORCE` are honoured). Write errors are ignored.
pub fn write_err(args: fmt::Arguments<'_>) {
    let mut err = anstream::stderr().lock();
    let _ = err.write_fmt(args);
}

/// Whether stderr shows colours: a terminal, and `NO_COLOR` is not set.
pub fn stderr_has_colour() -> bool {
    anstream::AutoStream::choice(&std::io::stderr()) != anstream::ColorChoice::Never
}

/// The kind of a message on stderr, which picks its prefix and colour.
#[derive(Debug, Clone, Copy)]
pub enum Level {
    /// `error: ...`, red.
    Error,
    /// `  caused by: ...` (with `--verbose`).
    Cause,
    /// `warning: ...`, yellow.
    Warning,
    /// `hint: ...`, cyan.
    Hint,
}

/// Prints `text` on stderr with the prefix of `level`.
pub fn print_level(level: Level, text: &str) {
    use anstyle::{AnsiColor, Style};
    let (prefix, style) = match level {
        Level::Error => (
            "error:",
            Style::new().bold().fg_color(Some(AnsiColor::Red.into())),
        ),
        Level::Cause => ("  caused by:", Style::new().dimmed()),
        Level::Warning => (
            "warning:",
            Style::new().bold().fg_color(Some(AnsiColor::Yellow.into())),
        ),
        Level::Hint => ("hint:", Style::new().fg_color(Some(AnsiColor::Cyan.into()))),
    };
    write_err(format_args!("{style}{prefix}{style:#} {text}\n"));
}

/// Parses a company id given on the command line.
pub fn parse_company(raw: &str) -> Result<CompanyId, CliError> {
    raw.parse()
        .map_err(|e| CliError::core(format!("--company {raw:?} is not a company id"), e))
}

/// Parses a tenant id given on the command line.
pub fn parse_tenant(raw: &str) -> Result<TenantId, CliError> {
    TenantId::new(raw).map_err(|e| CliError::core("--tenant is not a valid tenant id", e))
}

/// The subject named by `--company` or `--tenant` (through the tenant links).
pub async fn resolve_subject(
    auth: &PleoAuth,
    company: Option<&str>,
    tenant: Option<&str>,
) -> Result<Subject, CliError> {
    match (company, tenant) {
        (Some(company), _) => Ok(Subject::Company(parse_company(company)?)),
        (None, Some(tenant)) => {
            let tenant = parse_tenant(tenant)?;
            let environment = auth.environment().name();
            auth.tenant_links()
                .subject_for(environment, &tenant)
                .await
                .map_err(|e| CliError::core("reading the tenant link failed", e))?
                .map(|link| link.subject)
                .ok_or_else(|| {
                    CliError::new(
                        Code::NotConnected,
                        format!(
                            "tenant {:?} is not linked to a Pleo company in {environment}",
                            tenant.as_str()
                        ),
                    )
                    .hint(
                        "link it with `pleo-auth login --tenant` or `pleo-auth keys add --tenant`",
                    )
                })
        }
        (None, None) => Err(CliError::usage(
            "name the company (--company UUID) or your tenant (--tenant ID)",
        )),
    }
}

/// A subject for people: `company <uuid>` or `organisation <uuid>`.
pub fn describe(subject: &Subject) -> String {
    match subject {
        Subject::Company(c) => format!("company {c}"),
        Subject::Organisation(o) => format!("organisation {o}"),
    }
}

/// A method for people: `oauth`, `integrated-key` or `standalone-key`.
pub fn method_name(kind: CredentialKind) -> &'static str {
    match kind {
        CredentialKind::OAuth => "oauth",
        CredentialKind::IntegratedApiKey => "integrated-key",
        CredentialKind::StandaloneApiKey => "standalone-key",
    }
}

/// The widest spinner line: it must fit an 80-column terminal without wrapping, or every
/// redraw scrolls the screen.
pub const SPINNER_MAX_COLUMNS: usize = 79;

/// A spinner on stderr while something is awaited; a single line when stderr is not a
/// terminal. The message is cut to fit [`SPINNER_MAX_COLUMNS`] with its frame.
pub struct Spinner {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Spinner {
    /// Shows `message` with a spinner in front.
    pub fn start(message: &str) -> Self {
        let message = fit(message, SPINNER_MAX_COLUMNS - 2);
        if !std::io::stderr().is_terminal() {
            errln!("{message}");
            return Self {
                stop: None,
                task: None,
            };
        }
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
            let mut interval = tokio::time::interval(Duration::from_millis(100));
            let mut frame = 0usize;
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = interval.tick() => {
                        let mut err = std::io::stderr();
                        let _ = write!(err, "\r{} {message}", FRAMES[frame % FRAMES.len()]);
                        let _ = err.flush();
                        frame += 1;
                    }
                }
            }
            let mut err = std::io::stderr();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        });
        Self {
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Removes the spinner.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// `text` cut to at most `columns` characters, ending in `…` when cut.
pub fn fit(text: &str, columns: usize) -> String {
    if text.chars().count() <= columns {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(columns.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Prints rows as a table with a header, columns padded to their widest cell.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        outln!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_cuts_to_the_column_count() {
        assert_eq!(fit("short", 10), "short");
        let cut = fit(&"x".repeat(100), SPINNER_MAX_COLUMNS - 2);
        assert_eq!(cut.chars().count(), SPINNER_MAX_COLUMNS - 2);
        assert!(cut.ends_with('…'));
    }
}
