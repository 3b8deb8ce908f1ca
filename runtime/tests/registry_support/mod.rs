//! Test support for registries: a real registry (Debian's docker-registry,
//! distribution 2.8) on a free loopback port with a config and storage of
//! its own, a fault-injecting HTTP proxy in front of it, and a raw HTTP
//! client to put hand-made blobs and manifests into it. Every guard stops
//! what it started on drop.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// Whether a tool is installed; on CI a missing one fails the test.
pub fn have(tool: &str, package: &str) -> bool {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is missing on CI: scripts/setup installs the Debian package {package}"
        );
        println!("SKIPPED: {tool} is not installed (Debian package {package}; scripts/setup installs it)");
    }
    ok
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running registry; killed and its storage removed on drop.
pub struct Registry {
    child: Child,
    pub dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

impl Registry {
    /// Starts one, with htpasswd Basic auth if `user` is given. `None` when
    /// docker-registry is not installed (outside CI).
    pub fn start(user: Option<(&str, &str)>) -> Option<Registry> {
        Registry::start_with(user, false)
    }

    /// Starts one that speaks only TLS, with a self-signed certificate.
    pub fn start_tls() -> Option<Registry> {
        if !have("openssl", "openssl") {
            return None;
        }
        Registry::start_with(None, true)
    }

    fn start_with(user: Option<(&str, &str)>, tls: bool) -> Option<Registry> {
        if !have(REGISTRY_BIN, "docker-registry") {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("strata-registry-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        if let Some((u, p)) = user {
            assert!(
                have("htpasswd", "apache2-utils"),
                "htpasswd is needed for the auth tests"
            );
            let out = Command::new("htpasswd")
                .args(["-Bbn", u, p])
                .output()
                .unwrap();
            assert!(out.status.success(), "htpasswd -B failed");
            std::fs::write(dir.path().join("htpasswd"), &out.stdout).unwrap();
            cfg.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: strata-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            ));
        }
        if tls {
            let (crt, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
            let out = Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                ])
                .args([
                    "-subj",
                    "/CN=localhost",
                    "-addext",
                    "subjectAltName=IP:127.0.0.1",
                ])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&crt)
                .output()
                .unwrap();
            assert!(out.status.success(), "openssl: {out:?}");
            cfg.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                crt.display(),
                key.display()
            ));
        }
        std::fs::write(dir.path().join("config.yml"), cfg).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let r = Registry { child, dir, addr };
        let start = Instant::now();
        loop {
            if let Ok(resp) = http(&r.addr, "GET", "/v2/", &[], b"") {
                // A TLS registry answers plain HTTP with 400.
                if resp.status == 200 || resp.status == 401 || (tls && resp.status == 400) {
                    break;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "the registry did not start: {}",
                std::fs::read_to_string(r.dir.path().join("registry.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(r)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, k: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.as_str())
    }
}

fn read_head(r: &mut impl BufRead) -> std::io::Result<Vec<String>> {
    let mut lines = Vec::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l)? == 0 {
            break;
        }
        let l = l.trim_end().to_string();
        if l.is_empty() {
            break;
        }
        lines.push(l);
    }
    Ok(lines)
}

fn parse_headers(lines: &[String]) -> Vec<(String, String)> {
    lines
        .iter()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn dechunk(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut r = BufReader::new(b);
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).unwrap_or(0) == 0 {
            break;
        }
        let n = usize::from_str_radix(l.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        let mut buf = vec![0; n];
        if r.read_exact(&mut buf).is_err() {
            break;
        }
        out.extend(buf);
        let mut crlf = String::new();
        let _ = r.read_line(&mut crlf);
    }
    out
}

/// One HTTP/1.1 request with `Connection: close`.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut r = BufReader::new(s);
    let head = read_head(&mut r)?;
    let status = head
        .first()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = parse_headers(&head[1.min(head.len())..]);
    let mut body = Vec::new();
    if method != "HEAD" {
        r.read_to_end(&mut body)?;
    }
    let mut resp = Resp {
        status,
        headers,
        body,
    };
    if resp
        .header("Transfer-Encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        resp.body = dechunk(&resp.body);
    }
    Ok(resp)
}

/// sha256:HEX of bytes.
pub fn sha256(b: &[u8]) -> String {
    use std::process::Stdio;
    let mut c = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(b).unwrap();
    let out = c.wait_with_output().unwrap();
    format!(
        "sha256:{}",
        String::from_utf8_lossy(&out.stdout)
            .split(' ')
            .next()
            .unwrap()
    )
}

/// Uploads a blob monolithically; returns its digest.
pub fn put_blob(addr: &str, repo: &str, bytes: &[u8]) -> String {
    let d = sha256(bytes);
    let r = http(
        addr,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/"),
        &[],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 202, "start upload: {r:?}");
    let loc = r.header("Location").unwrap().to_string();
    let path = loc
        .split_once("://")
        .map(|(_, rest)| &rest[rest.find('/').unwrap()..])
        .unwrap_or(&loc)
        .to_string();
    let sep = if path.contains('?') { '&' } else { '?' };
    let r = http(
        addr,
        "PUT",
        &format!("{path}{sep}digest={d}"),
        &[("Content-Type", "application/octet-stream")],
        bytes,
    )
    .unwrap();
    assert_eq!(r.status, 201, "put blob: {r:?}");
    d
}

/// Puts a manifest or index; returns its digest.
pub fn put_manifest(
    addr: &str,
    repo: &str,
    reference: &str,
    media_type: &str,
    bytes: &[u8],
) -> String {
    let r = http(
        addr,
        "PUT",
        &format!("/v2/{repo}/manifests/{reference}"),
        &[("Content-Type", media_type)],
        bytes,
    )
    .unwrap();
    assert_eq!(
        r.status,
        201,
        "put manifest: {r:?} {}",
        String::from_utf8_lossy(&r.body)
    );
    sha256(bytes)
}

/// What the proxy does to a matching request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Flip a byte of the response body at this offset.
    Corrupt(usize),
    /// Send the full headers, then only this many body bytes, then close.
    Cut(usize),
    /// Answer this status (with `Retry-After: 1` for 429).
    Status(u16),
    /// Answer 200 with this body and content type.
    Replace(Vec<u8>, String),
    /// Send the body slowly (64 KiB every this many ms).
    Slow(u64),
}

/// A rule: requests whose path contains `path` get `fault`, `times` times.
#[derive(Debug, Clone)]
pub struct Rule {
    pub method: &'static str,
    pub path: String,
    pub fault: Fault,
    pub times: usize,
}

/// A loopback HTTP proxy in front of a registry that logs requests and
/// injects faults. Stops its threads on drop.
pub struct Proxy {
    pub addr: String,
    rules: Arc<Mutex<Vec<Rule>>>,
    log: Arc<Mutex<Vec<String>>>,
    bearer: Arc<Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Makes the proxy a Bearer-token registry: requests without
    /// `Authorization: Bearer TOKEN` get a 401 challenge whose realm is the
    /// proxy's `/token`, which hands out TOKEN.
    pub fn require_token(&self, token: &str) {
        *self.bearer.lock().unwrap() = Some(token.to_string());
    }

    pub fn start(upstream: &str) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let rules: Arc<Mutex<Vec<Rule>>> = Arc::default();
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (r2, l2, s2, up) = (
            rules.clone(),
            log.clone(),
            stop.clone(),
            upstream.to_string(),
        );
        let bearer: Arc<Mutex<Option<String>>> = Arc::default();
        let (b2, a2) = (bearer.clone(), addr.clone());
        let thread = std::thread::spawn(move || {
            for c in l.incoming() {
                if s2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(c) = c else { continue };
                let (r3, l3, up) = (r2.clone(), l2.clone(), up.clone());
                let tok = b2.lock().unwrap().clone().map(|t| (a2.clone(), t));
                std::thread::spawn(move || {
                    let _ = serve(c, &up, &r3, &l3, tok);
                });
            }
        });
        Proxy {
            addr,
            rules,
            log,
            bearer,
            stop,
            thread: Some(thread),
        }
    }

    pub fn add(&self, method: &'static str, path: &str, fault: Fault, times: usize) {
        self.rules.lock().unwrap().push(Rule {
            method,
            path: path.to_string(),
            fault,
            times,
        });
    }

    pub fn clear(&self) {
        self.rules.lock().unwrap().clear();
        self.log.lock().unwrap().clear();
    }

    /// `METHOD PATH [Range]` of every request so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    mut c: TcpStream,
    upstream: &str,
    rules: &Mutex<Vec<Rule>>,
    log: &Mutex<Vec<String>>,
    bearer: Option<(String, String)>,
) -> std::io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut r = BufReader::new(c.try_clone()?);
    if r.fill_buf()?.first() == Some(&0x16) {
        // A TLS hello: this proxy speaks plain HTTP only; close, as a
        // server that does not speak TLS would fail the handshake.
        return Ok(());
    }
    let head = read_head(&mut r)?;
    if head.is_empty() {
        return Ok(());
    }
    let mut parts = head[0].split(' ');
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let headers = parse_headers(&head[1..]);
    let get = |k: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    let len: usize = get("Content-Length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    let range = get("Range").map(|r| format!(" {r}")).unwrap_or_default();
    log.lock().unwrap().push(format!("{method} {path}{range}"));
    if let Some((me, token)) = &bearer {
        if path.starts_with("/token") {
            let b = format!("{{\"token\":\"{token}\"}}");
            write!(
                c,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
                b.len()
            )?;
            return Ok(());
        }
        if get("Authorization") != Some(format!("Bearer {token}")) {
            write!(
                c,
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://{me}/token\",service=\"test\"\r\n\
                 Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
            )?;
            return Ok(());
        }
    }
    let fault = {
        let mut rs = rules.lock().unwrap();
        rs.iter_mut()
            .find(|x| x.times > 0 && x.method == method && path.contains(&x.path))
            .map(|x| {
                x.times -= 1;
                x.fault.clone()
            })
    };
    match &fault {
        Some(Fault::Status(code)) => {
            let extra = if *code == 429 {
                "Retry-After: 1\r\n"
            } else {
                ""
            };
            write!(
                c,
                "HTTP/1.1 {code} Injected\r\nContent-Length: 0\r\n{extra}Connection: close\r\n\r\n"
            )?;
            return Ok(());
        }
        Some(Fault::Replace(b, ct)) => {
            write!(
                c,
                "HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                b.len()
            )?;
            c.write_all(b)?;
            return Ok(());
        }
        _ => {}
    }
    let mut u = TcpStream::connect(upstream)?;
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    for (k, v) in &headers {
        if !k.eq_ignore_ascii_case("Connection") && !k.eq_ignore_ascii_case("Authorization") {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    req.push_str("Connection: close\r\n\r\n");
    u.write_all(req.as_bytes())?;
    u.write_all(&body)?;
    let mut ur = BufReader::new(u);
    let uhead = read_head(&mut ur)?;
    let mut ubody = Vec::new();
    if method != "HEAD" {
        ur.read_to_end(&mut ubody)?;
    }
    let mut out = uhead.join("\r\n").into_bytes();
    out.extend_from_slice(b"\r\n\r\n");
    c.write_all(&out)?;
    match fault {
        Some(Fault::Corrupt(at)) if !ubody.is_empty() => {
            let i = at.min(ubody.len() - 1);
            ubody[i] ^= 0x55;
            c.write_all(&ubody)?;
        }
        Some(Fault::Cut(at)) => {
            c.write_all(&ubody[..at.min(ubody.len())])?;
            c.flush()?;
            let _ = c.shutdown(Shutdown::Both);
        }
        Some(Fault::Slow(ms)) => {
            for ch in ubody.chunks(64 << 10) {
                c.write_all(ch)?;
                std::thread::sleep(Duration::from_millis(ms));
            }
        }
        _ => c.write_all(&ubody)?,
    }
    Ok(())
}

/// The fixture images (saved by podman).
pub fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}
