//! A container's network beyond `lo`: user-mode networking as rootless
//! podman does it, for root and (later) ordinary users alike.
//!
//! - `--network pasta` (the default of `run` and `create`, as podman 5):
//!   Debian's `passt` package's `pasta` joins the container's network
//!   namespace, makes an interface there with the host's address and
//!   default route (`--config-net`), and forwards `-p` ports (`-t`, `-u`).
//! - `--network slirp4netns`: `slirp4netns --configure` makes `tap0`
//!   (10.0.2.100/24, gateway 10.0.2.2, DNS 10.0.2.3); `-p` ports are added
//!   through its API socket (`add_hostfwd`).
//! - `--network none`: `lo` only; `--network host`: the host's namespace.
//!
//! The helper is started by the supervisor between libcontainer's create
//! and start (the namespace exists, the program has not run yet), as its
//! child with the parent-death signal SIGKILL, and is killed when the
//! container's init exits: a killed supervisor takes it along. Its
//! identity is kept in `network.json` beside the container's state, with
//! the ports as bound (a random host port resolved), for `port`, `ps` and
//! `inspect`; `rm` kills a helper still named there.
//!
//! The host's loopback is not reachable from the container unless asked
//! (`pasta:--map-gw`, `slirp4netns:allow_host_loopback=true`, podman's
//! spellings): pasta is given `--no-map-gw`, slirp4netns
//! `--disable-host-loopback`.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::container::{Container, Network, Paths};
use crate::proc::ProcId;
use crate::process::StartFailure;
use crate::sys;

/// The default `--network` of `run` and `create` (podman 5's).
pub const DEFAULT_MODE: &str = "pasta";

/// The `--network` values, as a command line names them.
pub const MODES: [&str; 4] = ["pasta", "slirp4netns", "none", "host"];

/// A `--network` or `-p` value that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetworkError {
    /// An unknown network mode.
    #[error("invalid --network {0:?}: use pasta, slirp4netns, none or host")]
    Mode(String),
    /// An option the mode does not know.
    #[error("invalid --network {mode}:{option}: {mode} takes {known}")]
    Option {
        /// The mode.
        mode: &'static str,
        /// The option given.
        option: String,
        /// What it takes.
        known: &'static str,
    },
    /// A malformed `-p`.
    #[error("invalid -p {value:?}: {reason} (use [IP:][HOST_PORT:]CONTAINER_PORT[/tcp|udp])")]
    Port {
        /// The value.
        value: String,
        /// Why.
        reason: String,
    },
    /// `-p` with a mode that forwards nothing.
    #[error("-p needs --network pasta or slirp4netns, not {0}")]
    PortsWithout(&'static str),
}

/// Options of a mode, podman's spelling after `MODE:`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Options {
    /// Let the container reach the host's loopback through the gateway
    /// address (pasta's `--map-gw`, slirp4netns' `allow_host_loopback`).
    #[serde(default)]
    pub host_loopback: bool,
}

/// `--network MODE[:OPTION,...]`.
pub fn parse_mode(value: &str) -> Result<(Network, Options), NetworkError> {
    let (mode, opts) = value.split_once(':').unwrap_or((value, ""));
    let network = match mode {
        "pasta" => Network::Pasta,
        "slirp4netns" => Network::Slirp4netns,
        "none" | "" => Network::None,
        "host" => Network::Host,
        _ => return Err(NetworkError::Mode(value.to_string())),
    };
    let mut o = Options::default();
    for opt in opts.split(',').filter(|s| !s.is_empty()) {
        match (network, opt) {
            (Network::Pasta, "--map-gw") => o.host_loopback = true,
            (Network::Pasta, "--no-map-gw") => o.host_loopback = false,
            (Network::Slirp4netns, "allow_host_loopback=true") => o.host_loopback = true,
            (Network::Slirp4netns, "allow_host_loopback=false") => o.host_loopback = false,
            (Network::Pasta, _) => {
                return Err(NetworkError::Option {
                    mode: "pasta",
                    option: opt.into(),
                    known: "--map-gw or --no-map-gw",
                })
            }
            (Network::Slirp4netns, _) => {
                return Err(NetworkError::Option {
                    mode: "slirp4netns",
                    option: opt.into(),
                    known: "allow_host_loopback=true|false",
                })
            }
            (n, _) => {
                return Err(NetworkError::Option {
                    mode: name(n),
                    option: opt.into(),
                    known: "no options",
                })
            }
        }
    }
    Ok((network, o))
}

/// The `--network` name of a mode (docker's `NetworkMode`).
pub fn name(n: Network) -> &'static str {
    match n {
        Network::Pasta => "pasta",
        Network::Slirp4netns => "slirp4netns",
        Network::None => "none",
        Network::Host => "host",
    }
}

/// A transport protocol of a port mapping.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// `tcp` or `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// One `-p [IP:][HOST:]CTR[/PROTO]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// The host address to bind; `None` for every address.
    pub host_ip: Option<IpAddr>,
    /// The host port; 0 for one chosen at start.
    pub host_port: u16,
    /// The port in the container.
    pub container_port: u16,
    /// tcp or udp.
    #[serde(default)]
    pub protocol: Protocol,
}

impl PortMapping {
    /// `80/tcp`, docker's key for the container's side.
    pub fn container_key(&self) -> String {
        format!("{}/{}", self.container_port, self.protocol.as_str())
    }

    /// The host side as docker prints it: `127.0.0.1:8080`, `0.0.0.0:8080`,
    /// `[::1]:8080`.
    pub fn host_side(&self) -> String {
        match self.host_ip {
            Some(IpAddr::V6(a)) => format!("[{a}]:{}", self.host_port),
            Some(a) => format!("{a}:{}", self.host_port),
            None => format!("0.0.0.0:{}", self.host_port),
        }
    }

    /// docker's `HostIp` (`0.0.0.0` for every address).
    pub fn host_ip_text(&self) -> String {
        self.host_ip
            .map(|a| a.to_string())
            .unwrap_or_else(|| "0.0.0.0".into())
    }
}

fn parse_port(s: &str, what: &str, value: &str, zero_ok: bool) -> Result<u16, NetworkError> {
    let bad = |reason: String| NetworkError::Port {
        value: value.to_string(),
        reason,
    };
    if s.contains('-') {
        return Err(bad("port ranges are not supported".into()));
    }
    let p: u16 = s
        .parse()
        .map_err(|_| bad(format!("{what} {s:?} is not a port number")))?;
    if p == 0 && !zero_ok {
        return Err(bad(format!("{what} 0 is not a port")));
    }
    Ok(p)
}

/// Parses `-p`: `CTR`, `HOST:CTR`, `IP:HOST:CTR`, `IP::CTR`, `[IPv6]:HOST:CTR`,
/// each with an optional `/tcp` or `/udp`.
pub fn parse_publish(value: &str) -> Result<PortMapping, NetworkError> {
    let bad = |reason: &str| NetworkError::Port {
        value: value.to_string(),
        reason: reason.to_string(),
    };
    let (spec, proto) = match value.rsplit_once('/') {
        Some((s, "tcp")) => (s, Protocol::Tcp),
        Some((s, "udp")) => (s, Protocol::Udp),
        Some(_) => return Err(bad("the protocol must be tcp or udp")),
        None => (value, Protocol::Tcp),
    };
    let (ip, rest) = if let Some(r) = spec.strip_prefix('[') {
        let (a, rest) = r.split_once("]:").ok_or_else(|| bad("unclosed [IPv6]"))?;
        (Some(a), rest)
    } else {
        let parts: Vec<&str> = spec.split(':').collect();
        match parts.len() {
            1 | 2 => (None, spec),
            3 => (Some(parts[0]), &spec[parts[0].len() + 1..]),
            _ => return Err(bad("too many ':'")),
        }
    };
    let host_ip = match ip {
        None | Some("") => None,
        Some(a) => Some(
            a.parse::<IpAddr>()
                .map_err(|_| bad(&format!("{a:?} is not an IP address")))?,
        ),
    };
    let (host, ctr) = match rest.split_once(':') {
        Some((h, c)) => (h, c),
        None if ip.is_none() => ("", rest),
        None => return Err(bad("expected IP:HOST_PORT:CONTAINER_PORT")),
    };
    let host_port = if host.is_empty() {
        0
    } else {
        parse_port(host, "host port", value, false)?
    };
    let container_port = parse_port(ctr, "container port", value, false)?;
    Ok(PortMapping {
        host_ip,
        host_port,
        container_port,
        protocol: proto,
    })
}

/// What the supervisor records while a helper runs (`network.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Runtime {
    /// pasta or slirp4netns.
    pub helper: Option<ProcId>,
    /// The mappings as bound (random host ports resolved).
    pub ports: Vec<PortMapping>,
}

fn runtime_file(paths: &Paths) -> PathBuf {
    paths.dir.join("network.json")
}

/// The ports of a running container as bound; empty when it is not
/// running (as docker shows them).
pub fn running_ports(c: &Container) -> Vec<PortMapping> {
    if !matches!(c.running_init(), Ok(Some(_))) {
        return Vec::new();
    }
    std::fs::read(runtime_file(&c.paths))
        .ok()
        .and_then(|b| serde_json::from_slice::<Runtime>(&b).ok())
        .map(|r| r.ports)
        .unwrap_or_default()
}

/// Kills a helper a dead supervisor left (`rm`); the parent-death signal
/// normally did already.
pub fn stop_leftover(paths: &Paths) {
    let f = runtime_file(paths);
    if let Some(p) = std::fs::read(&f)
        .ok()
        .and_then(|b| serde_json::from_slice::<Runtime>(&b).ok())
        .and_then(|r| r.helper)
    {
        let _ = p.signal(nix::sys::signal::Signal::SIGKILL);
    }
    let _ = std::fs::remove_file(f);
}

/// docker's `ps` PORTS cell: `127.0.0.1:8080->80/tcp, 0.0.0.0:9000->9000/udp`.
pub fn ports_column(ports: &[PortMapping]) -> String {
    ports
        .iter()
        .map(|p| format!("{}->{}", p.host_side(), p.container_key()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// docker's `{"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}]}`
/// (`NetworkSettings.Ports`, `HostConfig.PortBindings`).
pub fn ports_json(ports: &[PortMapping]) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for p in ports {
        let e = m
            .entry(p.container_key())
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
        if let serde_json::Value::Array(v) = e {
            v.push(serde_json::json!({
                "HostIp": p.host_ip_text(),
                "HostPort": if p.host_port == 0 { String::new() } else { p.host_port.to_string() },
            }));
        }
    }
    serde_json::Value::Object(m)
}

/// A running pasta or slirp4netns; killed (and reaped) on drop.
pub struct Helper {
    child: Child,
    record: PathBuf,
    // slirp4netns exits when this closes (`--exit-fd`).
    _exit_w: Option<OwnedFd>,
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.record);
    }
}

/// Where a program is on `PATH`.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn helper_program(n: Network) -> Result<PathBuf, StartFailure> {
    let (prog, package) = match n {
        Network::Slirp4netns => ("slirp4netns", "slirp4netns"),
        _ => ("pasta", "passt"),
    };
    find_program(prog).ok_or_else(|| {
        StartFailure::runtime(format!(
            "--network {}: {prog} is not installed; install the Debian package {package} \
             (apt-get install {package}) or use another --network",
            name(n)
        ))
    })
}

/// Host ports for the mappings that have none: a free port of the
/// address, as docker chooses one at start.
fn resolve_ports(ports: &[PortMapping]) -> Result<Vec<PortMapping>, StartFailure> {
    ports
        .iter()
        .map(|p| {
            if p.host_port != 0 {
                return Ok(p.clone());
            }
            let ip = p.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
            let at = SocketAddr::new(ip, 0);
            let port = match p.protocol {
                Protocol::Tcp => TcpListener::bind(at).and_then(|l| l.local_addr()),
                Protocol::Udp => UdpSocket::bind(at).and_then(|s| s.local_addr()),
            }
            .map_err(|e| {
                StartFailure::runtime(format!(
                    "cannot find a free host port for -p {}: {e}",
                    p.container_key()
                ))
            })?
            .port();
            Ok(PortMapping {
                host_port: port,
                ..p.clone()
            })
        })
        .collect()
}

/// The helper's last message, without pasta's `0.5004: ERROR:` prefix.
fn last_line(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let line = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty() && !l.contains("syslog"))
        .unwrap_or("");
    let line = line.split_once("ERROR:").map_or(line, |(_, m)| m);
    line.trim().to_string()
}

/// Starts the network helper of `c` for the namespace of process `pid`
/// (the container's init, created and not yet started); `None` for
/// `none` and `host`.
pub fn start(c: &Container, pid: libc::pid_t) -> Result<Option<Helper>, StartFailure> {
    let cfg = &c.config;
    if matches!(cfg.network, Network::None | Network::Host) {
        return Ok(None);
    }
    let prog = helper_program(cfg.network)?;
    tun_usable(cfg.network)?;
    let ports = resolve_ports(&cfg.ports)?;
    let log = c.paths.dir.join("network.log");
    let _ = std::fs::remove_file(&log);
    let record = runtime_file(&c.paths);
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        StartFailure::runtime(format!("--network {}: {what}: {e}", name(cfg.network)))
    };
    let (child, exit_w) = match cfg.network {
        Network::Pasta => (start_pasta(&prog, c, pid, &ports, &log)?, None),
        _ => {
            let (child, exit_w) = start_slirp(&prog, c, pid, &ports, &log)?;
            (child, Some(exit_w))
        }
    };
    let mut helper = Helper {
        child,
        record: record.clone(),
        _exit_w: exit_w,
    };
    let rt = Runtime {
        helper: ProcId::of(helper.child.id() as i32),
        ports,
    };
    std::fs::write(&record, serde_json::to_vec(&rt).expect("serialises"))
        .map_err(|e| fail(&format!("write {}", record.display()), &e))?;
    if let Ok(Some(st)) = helper.child.try_wait() {
        return Err(fail("the helper exited", &st));
    }
    Ok(Some(helper))
}

/// pasta and slirp4netns open `/dev/net/tun` inside the namespace: without
/// `CAP_DAC_OVERRIDE` of the host (rootless) it must be open to all.
fn tun_usable(net: Network) -> Result<(), StartFailure> {
    use nix::unistd::{access, AccessFlags};
    match access("/dev/net/tun", AccessFlags::R_OK | AccessFlags::W_OK) {
        Ok(()) => Ok(()),
        Err(e) => Err(StartFailure::runtime(format!(
            "--network {}: /dev/net/tun: {e}; user-mode networking needs it readable and writable by the user (mode 0666, as Debian makes it), or use --network none",
            name(net)
        ))),
    }
}

/// The deadline for a helper to say it is ready.
const READY_WITHIN: Duration = Duration::from_secs(10);

fn start_pasta(
    prog: &Path,
    c: &Container,
    pid: libc::pid_t,
    ports: &[PortMapping],
    log: &Path,
) -> Result<Child, StartFailure> {
    let fail = |what: String| StartFailure::runtime(format!("--network pasta: {what}"));
    // pasta opens the namespace itself, after dropping capabilities: a
    // descriptor it inherits, reopened through its own /proc/self/fd,
    // needs none (/proc/PID/ns/net of the init would need CAP_SYS_PTRACE).
    let ns = File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|e| fail(format!("open the container's network namespace: {e}")))?;
    let pidfile = c.paths.dir.join("pasta.pid");
    let _ = std::fs::remove_file(&pidfile);
    let mut cmd = Command::new(prog);
    cmd.args(["--config-net", "--foreground", "--quiet"])
        .arg("--log-file")
        .arg(log)
        .arg("--pid")
        .arg(&pidfile)
        .arg("--netns")
        .arg(format!("/proc/self/fd/{}", ns.as_raw_fd()))
        .args(["-T", "none", "-U", "none"]);
    if nix::unistd::geteuid().is_root() {
        // As root, pasta switches to nobody and drops the capabilities it
        // needs to enter the namespace unless told to stay root.
        cmd.args(["--runas", "0:0"]);
    }
    if !c.config.network_options.host_loopback {
        cmd.arg("--no-map-gw");
    }
    cmd.args(pasta_port_args(ports));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = sys::spawn_tied(&mut cmd, &[ns.as_raw_fd()])
        .map_err(|e| fail(format!("cannot run {}: {e}", prog.display())))?;
    drop(ns);
    // pasta writes its PID file once the namespace is configured and the
    // ports are bound.
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        if std::fs::metadata(&pidfile).is_ok_and(|m| m.len() > 0) {
            let _ = std::fs::remove_file(&pidfile);
            return Ok(child);
        }
        if let Ok(Some(st)) = child.try_wait() {
            let why = last_line(log);
            return Err(fail(if why.is_empty() {
                format!("pasta exited ({st})")
            } else {
                format!("pasta failed: {why}")
            }));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail(format!(
                "pasta was not ready within {}s",
                READY_WITHIN.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// pasta's `-t`/`-u` options for the mappings (one per mapping, an
/// address as `IP/`); `none` for a protocol without any, so pasta does
/// not forward the ports the container happens to bind.
fn pasta_port_args(ports: &[PortMapping]) -> Vec<String> {
    let mut args = Vec::new();
    for (flag, proto) in [("-t", Protocol::Tcp), ("-u", Protocol::Udp)] {
        let mine: Vec<&PortMapping> = ports.iter().filter(|p| p.protocol == proto).collect();
        if mine.is_empty() {
            args.extend([flag.to_string(), "none".to_string()]);
        }
        for p in mine {
            let spec = match p.host_ip {
                Some(ip) => format!("{ip}/{}:{}", p.host_port, p.container_port),
                None => format!("{}:{}", p.host_port, p.container_port),
            };
            args.extend([flag.to_string(), spec]);
        }
    }
    args
}

fn start_slirp(
    prog: &Path,
    c: &Container,
    pid: libc::pid_t,
    ports: &[PortMapping],
    log: &Path,
) -> Result<(Child, OwnedFd), StartFailure> {
    let fail = |what: String| StartFailure::runtime(format!("--network slirp4netns: {what}"));
    let pipe =
        || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| fail(format!("pipe: {e}")));
    let (ready_r, ready_w) = pipe()?;
    let (exit_r, exit_w) = pipe()?;
    let sock_name = "slirp4netns.sock";
    let _ = std::fs::remove_file(c.paths.dir.join(sock_name));
    let logf = File::create(log).map_err(|e| fail(format!("create {}: {e}", log.display())))?;
    let mut cmd = Command::new(prog);
    // The socket's path is relative to the container's directory, so it
    // fits in a socket address whatever the store's path.
    cmd.current_dir(&c.paths.dir)
        .args([
            "--configure",
            "--mtu=65520",
            "--enable-sandbox",
            "--enable-seccomp",
        ])
        .arg(format!("--ready-fd={}", ready_w.as_raw_fd()))
        .arg(format!("--exit-fd={}", exit_r.as_raw_fd()))
        .arg(format!("--api-socket={sock_name}"));
    if !c.config.network_options.host_loopback {
        cmd.arg("--disable-host-loopback");
    }
    cmd.arg(pid.to_string())
        .arg("tap0")
        .stdin(Stdio::null())
        .stdout(Stdio::from(
            logf.try_clone()
                .map_err(|e| fail(format!("dup the log: {e}")))?,
        ))
        .stderr(Stdio::from(logf));
    let mut child = sys::spawn_tied(&mut cmd, &[ready_w.as_raw_fd(), exit_r.as_raw_fd()])
        .map_err(|e| fail(format!("cannot run {}: {e}", prog.display())))?;
    drop(ready_w);
    drop(exit_r);
    // It writes "1" when tap0 is configured; EOF if it dies first.
    let mut b = [0u8; 1];
    let ready = File::from(ready_r).read(&mut b).unwrap_or(0) == 1;
    let kill = |mut child: Child| {
        let _ = child.kill();
        let _ = child.wait();
    };
    if !ready {
        kill(child);
        let why = last_line(log);
        return Err(fail(format!("slirp4netns failed: {why}")));
    }
    if let Ok(Some(st)) = child.try_wait() {
        return Err(fail(format!("slirp4netns exited ({st})")));
    }
    if !ports.is_empty() {
        let dir = File::open(&c.paths.dir).map_err(|e| fail(format!("open the state: {e}")))?;
        let sock = format!("/proc/self/fd/{}/{sock_name}", dir.as_raw_fd());
        for p in ports {
            if let Err(e) = add_hostfwd(Path::new(&sock), p) {
                kill(child);
                return Err(fail(format!(
                    "cannot forward {}->{} (is the host port in use?): {e}",
                    p.host_side(),
                    p.container_key()
                )));
            }
        }
    }
    Ok((child, exit_w))
}

/// Asks slirp4netns (API socket) to forward a host port.
fn add_hostfwd(sock: &Path, p: &PortMapping) -> Result<(), HostfwdError> {
    let mut s = UnixStream::connect(sock).map_err(|err| HostfwdError::Connect {
        path: sock.to_path_buf(),
        err,
    })?;
    let req = serde_json::json!({
        "execute": "add_hostfwd",
        "arguments": {
            "proto": p.protocol.as_str(),
            "host_addr": p.host_ip_text(),
            "host_port": p.host_port,
            "guest_port": p.container_port,
        }
    });
    s.write_all(req.to_string().as_bytes())
        .map_err(HostfwdError::Io)?;
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .map_err(HostfwdError::Io)?;
    let v: serde_json::Value =
        serde_json::from_str(&line).map_err(|_| HostfwdError::Answer(line.clone()))?;
    match v.get("error") {
        Some(e) => Err(HostfwdError::Refused(
            e.get("desc")
                .and_then(|d| d.as_str())
                .unwrap_or("refused")
                .to_string(),
        )),
        None => Ok(()),
    }
}

/// Why slirp4netns did not forward a port.
#[derive(Debug, thiserror::Error)]
enum HostfwdError {
    /// Its API socket.
    #[error("connect {}: {err}", .path.display())]
    Connect {
        path: std::path::PathBuf,
        err: std::io::Error,
    },
    /// Talking to it.
    #[error("{0}")]
    Io(std::io::Error),
    /// An answer that is no JSON.
    #[error("unexpected answer {0:?}")]
    Answer(String),
    /// Its refusal, as it said it.
    #[error("{0}")]
    Refused(String),
}

/// The `/etc/resolv.conf` of a container of this network.
pub fn resolv_conf(n: Network) -> String {
    match n {
        // slirp4netns' own DNS forwarder.
        Network::Slirp4netns => "nameserver 10.0.2.3\n".into(),
        // pasta's namespace reaches the host's resolvers as the host does.
        Network::Pasta | Network::Host => {
            std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()
        }
        Network::None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_forms_parse_as_docker() {
        let p = parse_publish("127.0.0.1:8080:80").unwrap();
        assert_eq!(p.host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!((p.host_port, p.container_port), (8080, 80));
        assert_eq!(p.protocol, Protocol::Tcp);
        let p = parse_publish("8080:80/udp").unwrap();
        assert_eq!(
            (p.host_ip, p.host_port, p.protocol),
            (None, 8080, Protocol::Udp)
        );
        let p = parse_publish("80").unwrap();
        assert_eq!((p.host_port, p.container_port), (0, 80));
        let p = parse_publish("127.0.0.1::80").unwrap();
        assert_eq!((p.host_port, p.container_port), (0, 80));
        let p = parse_publish("[::1]:8080:80/tcp").unwrap();
        assert_eq!(p.host_ip, Some("::1".parse().unwrap()));
        assert_eq!(p.host_side(), "[::1]:8080");
        for bad in [
            "",
            "x",
            "80/sctp",
            "0",
            "70000",
            "1:2:3:4",
            "a.b:1:2",
            "8000-8010:80",
            "127.0.0.1:80",
        ] {
            assert!(parse_publish(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn modes_and_options_parse() {
        assert_eq!(
            parse_mode("pasta").unwrap(),
            (Network::Pasta, Options::default())
        );
        assert!(parse_mode("pasta:--map-gw").unwrap().1.host_loopback);
        assert!(
            parse_mode("slirp4netns:allow_host_loopback=true")
                .unwrap()
                .1
                .host_loopback
        );
        assert_eq!(parse_mode("none").unwrap().0, Network::None);
        assert_eq!(parse_mode("host").unwrap().0, Network::Host);
        assert!(parse_mode("bridge").is_err());
        assert!(parse_mode("pasta:--tcp-ports=all").is_err());
        assert!(parse_mode("host:x").is_err());
        for m in MODES {
            assert_eq!(name(parse_mode(m).unwrap().0), m);
        }
    }

    #[test]
    fn pasta_gets_one_option_per_mapping() {
        let ports = vec![
            parse_publish("127.0.0.1:8080:80").unwrap(),
            parse_publish("9000:90").unwrap(),
            parse_publish("[::1]:5353:53/udp").unwrap(),
        ];
        assert_eq!(
            pasta_port_args(&ports),
            [
                "-t",
                "127.0.0.1/8080:80",
                "-t",
                "9000:90",
                "-u",
                "::1/5353:53"
            ]
        );
        assert_eq!(pasta_port_args(&[]), ["-t", "none", "-u", "none"]);
    }

    #[test]
    fn ports_show_as_docker() {
        let ports = vec![
            parse_publish("127.0.0.1:8080:80").unwrap(),
            parse_publish("9000:9000/udp").unwrap(),
        ];
        assert_eq!(
            ports_column(&ports),
            "127.0.0.1:8080->80/tcp, 0.0.0.0:9000->9000/udp"
        );
        let j = ports_json(&ports);
        assert_eq!(j["80/tcp"][0]["HostIp"], "127.0.0.1");
        assert_eq!(j["80/tcp"][0]["HostPort"], "8080");
        assert_eq!(j["9000/udp"][0]["HostIp"], "0.0.0.0");
    }
}
