//! `pleo-auth-sandbox`: runs the Pleo emulator on a loopback port until interrupted.
//!
//! Prints the base URL on the first line of stdout, so scripts can read it.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use pleo_auth_sandbox::Sandbox;
use uuid::Uuid;

const USAGE: &str =
    "usage: pleo-auth-sandbox [--port N] [--host LOOPBACK_IP] [--environment-name NAME]
                         [--auto-approve COMPANY_OR_ORG_UUID] [--secret-prefix PREFIX]

Runs a local emulator of the Pleo authorization server and External API.
Prints the base URL on the first line of stdout and serves until SIGINT or SIGTERM.";

struct Args {
    host: IpAddr,
    port: u16,
    environment_name: String,
    auto_approve: Option<Uuid>,
    secret_prefix: String,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        host: IpAddr::V4(Ipv4Addr::LOCALHOST),
        port: 0,
        environment_name: "sandbox".to_owned(),
        auto_approve: None,
        secret_prefix: String::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Ok(None);
        }
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
            None => (flag.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match name.as_str() {
            "--port" => {
                args.port = value()?
                    .parse()
                    .map_err(|_| "--port needs a number from 0 to 65535".to_owned())?;
            }
            "--host" => {
                args.host = value()?
                    .parse()
                    .map_err(|_| "--host needs an IP address".to_owned())?;
            }
            "--environment-name" => args.environment_name = value()?,
            "--auto-approve" => {
                args.auto_approve = Some(
                    value()?
                        .parse()
                        .map_err(|_| "--auto-approve needs a UUID".to_owned())?,
                );
            }
            "--secret-prefix" => args.secret_prefix = value()?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Some(args))
}

#[cfg(unix)]
async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut sigterm) => {
            tokio::select! {
                _ = sigterm.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            tokio::signal::ctrl_c().await.ok();
        }
    }
}

#[cfg(not(unix))]
async fn terminated() {
    tokio::signal::ctrl_c().await.ok();
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("error: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let started = Sandbox::builder()
        .bind(SocketAddr::new(args.host, args.port))
        .environment_name(&args.environment_name)
        .auto_approve(args.auto_approve)
        .secret_prefix(&args.secret_prefix)
        .start()
        .await;
    let sandbox = match started {
        Ok(sandbox) => sandbox,
        Err(error) => {
            let mut message = error.to_string();
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!("error: {message}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout();
    if writeln!(stdout, "{}", sandbox.base_url()).is_err() || stdout.flush().is_err() {
        return ExitCode::FAILURE;
    }
    eprintln!(
        "pleo sandbox {:?} listening on {} (admin endpoints under /_sandbox/); stop with Ctrl-C",
        sandbox.environment_name(),
        sandbox.base_url()
    );
    terminated().await;
    sandbox.shutdown().await;
    ExitCode::SUCCESS
}
