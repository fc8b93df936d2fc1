//! Terminal helpers: who a command is about, a spinner, tables.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use pleo_auth::{CompanyId, CredentialKind, PleoAuth, Subject, TenantId};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::exit::{CliError, Code};

/// Whether stdout is a terminal (a person reading, not a pipe).
pub fn stdout_is_terminal() -> bool {
    std::io::stdout().is_terminal()
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

/// A spinner on stderr while something is awaited; a single line when stderr is not a
/// terminal.
pub struct Spinner {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Spinner {
    /// Shows `message` with a spinner in front.
    pub fn start(message: String) -> Self {
        if !std::io::stderr().is_terminal() {
            eprintln!("{message}");
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
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
