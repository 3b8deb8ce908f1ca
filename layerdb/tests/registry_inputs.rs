//! What a registry may send us: credentials stay with the registry's own
//! origin, the auth file's temporary name is never written through a
//! planted symlink, and a body that trickles forever ends at its deadline.
//!
//! The registries here are small loopback HTTP servers written in the
//! test, each recording the `Authorization` header of every request. The
//! push test runs in a child process (this binary re-run on `push_child`
//! with `STRATA_PUSH_CHILD` set), because push reads credentials from the
//! file `REGISTRY_AUTH_FILE` names.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use strata_layerdb::registry::{self, auth, BlobDeadline, Credentials, PullOptions, PushOptions};
use strata_layerdb::{Digest, ImportOptions};

/// One request a server got.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    authorization: Option<String>,
}

/// Writes the answer to a request; may loop (checking `stop`).
type Handler = dyn Fn(&Seen, &mut TcpStream, &AtomicBool) -> std::io::Result<()> + Send + Sync;

/// A loopback HTTP/1.1 server, one connection per request; stops its
/// threads on drop.
struct Server {
    addr: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(handler: Arc<Handler>) -> Server {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for c in l.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(c) = c else { continue };
                let (h, seen, stop) = (handler.clone(), seen2.clone(), stop2.clone());
                std::thread::spawn(move || {
                    let _ = serve(c, &*h, &seen, &stop);
                });
            }
        });
        Server {
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Server {
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
    handler: &Handler,
    seen: &Mutex<Vec<Seen>>,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut r = BufReader::new(c.try_clone()?);
    if r.fill_buf()?.first() == Some(&0x16) {
        return Ok(()); // a TLS hello: plain HTTP only, as a server without TLS
    }
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let line = line.trim_end().to_string();
        if line.is_empty() {
            break;
        }
        head.push(line);
    }
    let mut first = head[0].split(' ');
    let (method, path) = (
        first.next().unwrap_or("").to_string(),
        first.next().unwrap_or("").to_string(),
    );
    let header = |k: &str| {
        head[1..].iter().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(k)
                .then(|| v.trim().to_string())
        })
    };
    let len: usize = header("Content-Length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    let s = Seen {
        method,
        path,
        authorization: header("Authorization"),
    };
    seen.lock().unwrap().push(s.clone());
    handler(&s, &mut c, stop)
}

fn answer(
    c: &mut TcpStream,
    status: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut h = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("\r\n");
    c.write_all(h.as_bytes())?;
    c.write_all(body)
}

const USER: &str = "alice";
const PASSWORD: &str = "s3cret-password";

fn basic() -> String {
    use std::process::Stdio;
    // base64 of "alice:s3cret-password", computed by coreutils to stay
    // independent of the code under test.
    let out = Command::new("base64")
        .arg("-w0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin
                .take()
                .unwrap()
                .write_all(format!("{USER}:{PASSWORD}").as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    format!("Basic {}", String::from_utf8(out.stdout).unwrap())
}

fn creds() -> Credentials {
    Credentials {
        username: USER.into(),
        password: PASSWORD.into(),
    }
}

/// A token server: hands out `tok` to anyone.
fn token_server() -> Server {
    Server::start(Arc::new(|_s: &Seen, c: &mut TcpStream, _: &AtomicBool| {
        answer(
            c,
            "200 OK",
            &[("Content-Type", "application/json".into())],
            br#"{"token":"tok"}"#,
        )
    }))
}

/// A registry whose `/v2/` wants `Bearer tok`, with a challenge naming
/// `realm`; it serves that realm itself when `realm` is its own.
fn bearer_registry(realm: Arc<Mutex<String>>) -> Server {
    Server::start(Arc::new(
        move |s: &Seen, c: &mut TcpStream, _: &AtomicBool| {
            if s.path.starts_with("/token") {
                return answer(c, "200 OK", &[], br#"{"token":"tok"}"#);
            }
            if s.authorization.as_deref() == Some("Bearer tok") {
                return answer(c, "200 OK", &[], b"{}");
            }
            let ch = format!(
                "Bearer realm=\"{}\",service=\"test\"",
                realm.lock().unwrap()
            );
            answer(c, "401 Unauthorized", &[("WWW-Authenticate", ch)], b"{}")
        },
    ))
}

#[test]
fn a_bearer_realm_elsewhere_over_http_gets_no_basic_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("auth.json");
    // The realm on another port, plain HTTP: asked without credentials.
    let foreign = token_server();
    let realm = Arc::new(Mutex::new(format!("http://{}/token", foreign.addr)));
    let reg = bearer_registry(realm.clone());
    registry::login(&reg.addr, &creds(), false, Some(&file)).unwrap();
    let asked = foreign.seen();
    assert!(!asked.is_empty(), "the token server was never asked");
    for s in &asked {
        assert_eq!(
            s.authorization, None,
            "the credentials went to a token realm on another port over plain HTTP: {s:?}"
        );
    }
    // The registry's own realm gets them (the control).
    *realm.lock().unwrap() = format!("http://{}/token", reg.addr);
    registry::login(&reg.addr, &creds(), false, Some(&file)).unwrap();
    let own: Vec<Seen> = reg
        .seen()
        .into_iter()
        .filter(|s| s.path.starts_with("/token"))
        .collect();
    assert!(
        own.iter()
            .any(|s| s.authorization.as_deref() == Some(&basic())),
        "the registry's own realm did not get the credentials: {own:?}"
    );
}

#[test]
fn the_auth_file_is_never_written_through_a_planted_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("auth.json");
    let pid = std::process::id();
    // Every temporary name the writer may pick first, each a symlink to a
    // file of its own.
    let mut names = vec![format!(".auth.json.tmp-{pid}")];
    names.extend((0..4).map(|n| format!(".auth.json.tmp-{pid}-{n}")));
    let mut victims = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let v = dir.path().join(format!("victim{i}"));
        std::fs::write(&v, "victim").unwrap();
        std::os::unix::fs::symlink(&v, dir.path().join(n)).unwrap();
        victims.push(v);
    }
    auth::store(&file, "reg.example", &creds()).unwrap();
    for v in &victims {
        assert_eq!(
            std::fs::read_to_string(v).unwrap(),
            "victim",
            "{} was written through a planted symlink",
            v.display()
        );
    }
    let md = std::fs::symlink_metadata(&file).unwrap();
    assert!(md.file_type().is_file(), "auth.json is not a plain file");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert!(v["auths"]["reg.example"]["auth"].is_string(), "{v}");
}

#[test]
fn push_child() {
    let Ok(reg) = std::env::var("STRATA_PUSH_CHILD") else {
        return; // run as a normal test: nothing to do
    };
    let (_d, store) = common::store();
    let tar = common::TarBuilder::new().file("a", b"hello").build();
    let name = format!("{reg}/repo:latest");
    store
        .import(
            &mut &tar[..],
            &ImportOptions {
                name: Some(name.clone()),
                created: Some("2020-01-01T00:00:00Z".into()),
                ..Default::default()
            },
        )
        .unwrap();
    if std::env::var("STRATA_CHILD_OP").as_deref() == Ok("pull") {
        let opts = PullOptions {
            tls_verify: false,
            ..Default::default()
        };
        let res = store.pull(&format!("{reg}/repo:latest"), &opts, &registry::NoProgress);
        println!(
            "\nRESULT {}",
            res.map(|p| p.id.to_string())
                .unwrap_or_else(|e| e.to_string())
        );
        return;
    }
    let res = store.push(
        &name,
        None,
        &PushOptions {
            tls_verify: false,
            ..Default::default()
        },
        &registry::NoProgress,
    );
    println!(
        "\nRESULT {}",
        res.map(|p| p.destination).unwrap_or_else(|e| e.to_string())
    );
}

/// Runs `op` (push or pull) against `reg` in a child with credentials for
/// it in its own auth file; returns the child's output.
fn in_child(reg: &str, op: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("auth.json");
    auth::store(&file, reg, &creds()).unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "push_child", "--nocapture", "--test-threads=1"])
        .env("STRATA_PUSH_CHILD", reg)
        .env("STRATA_CHILD_OP", op)
        .env("REGISTRY_AUTH_FILE", &file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout}");
    stdout
}

/// A registry that wants Basic credentials and redirects every blob and
/// manifest GET to `elsewhere`, as registries do to a CDN.
fn redirecting_registry(elsewhere: String) -> Server {
    let expected = basic();
    Server::start(Arc::new(
        move |s: &Seen, c: &mut TcpStream, _: &AtomicBool| {
            if s.authorization.as_deref() != Some(&expected) {
                let ch = "Basic realm=\"test\"".to_string();
                return answer(c, "401 Unauthorized", &[("WWW-Authenticate", ch)], b"{}");
            }
            if s.path == "/v2/" {
                return answer(c, "200 OK", &[], b"{}");
            }
            let loc = format!("{elsewhere}{}", s.path);
            answer(c, "307 Temporary Redirect", &[("Location", loc)], b"")
        },
    ))
}

/// Redirects followed by ureq: held by `RedirectAuthHeaders::Never`, which
/// the client now sets itself (this passed with ureq's default before).
#[test]
fn a_redirect_to_another_port_gets_no_authorization() {
    let cdn = Server::start(Arc::new(|_s: &Seen, c: &mut TcpStream, _: &AtomicBool| {
        answer(c, "404 Not Found", &[], b"{}")
    }));
    let reg = redirecting_registry(format!("http://{}", cdn.addr));
    in_child(&reg.addr, "pull");
    let got = cdn.seen();
    assert!(!got.is_empty(), "the redirect was never followed");
    for s in &got {
        assert_eq!(
            s.authorization, None,
            "the credentials followed a redirect to another port: {s:?}"
        );
    }
}

#[test]
fn an_upload_location_on_another_port_gets_no_authorization() {
    // The place uploads are sent to: records and refuses them.
    let upload = Server::start(Arc::new(|_s: &Seen, c: &mut TcpStream, _: &AtomicBool| {
        answer(c, "400 Bad Request", &[], b"")
    }));
    let expected = basic();
    let loc = format!("http://{}/upload/1", upload.addr);
    let reg = Server::start(Arc::new(
        move |s: &Seen, c: &mut TcpStream, _: &AtomicBool| {
            if s.authorization.as_deref() != Some(&expected) {
                let ch = "Basic realm=\"test\"".to_string();
                return answer(c, "401 Unauthorized", &[("WWW-Authenticate", ch)], b"{}");
            }
            match s.method.as_str() {
                "HEAD" => answer(c, "404 Not Found", &[], b""),
                "POST" => answer(c, "202 Accepted", &[("Location", loc.clone())], b""),
                _ => answer(c, "200 OK", &[], b"{}"),
            }
        },
    ));
    let stdout = in_child(&reg.addr, "push");
    assert!(
        reg.seen().iter().any(|s| s.authorization.is_some()),
        "the registry itself never got the credentials: {:?}",
        reg.seen()
    );
    let got = upload.seen();
    assert!(
        !got.is_empty(),
        "the upload Location was never used: {stdout}"
    );
    for s in &got {
        assert_eq!(
            s.authorization, None,
            "the credentials went to an upload Location on another port: {s:?}"
        );
    }
}

/// A registry serving one image whose layer trickles one byte every 50 ms.
fn trickle_registry() -> Server {
    let tar = common::TarBuilder::new()
        .file("big", &vec![7u8; 100_000])
        .build();
    let diff = Digest::of(&tar);
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":["{diff}"]}}}}"#
    )
    .into_bytes();
    let cd = Digest::of(&config);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{diff}","size":{}}}]}}"#,
        config.len(),
        tar.len()
    )
    .into_bytes();
    Server::start(Arc::new(
        move |s: &Seen, c: &mut TcpStream, stop: &AtomicBool| {
            let mt = (
                "Content-Type",
                "application/vnd.oci.image.manifest.v1+json".to_string(),
            );
            if s.path.contains("/manifests/") {
                answer(c, "200 OK", &[mt], &manifest)
            } else if s.path.ends_with(&cd.to_string()) {
                answer(c, "200 OK", &[], &config)
            } else if s.path.ends_with(&diff.to_string()) {
                write!(
                    c,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    tar.len()
                )?;
                for b in &tar {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    c.write_all(&[*b])?;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(())
            } else {
                answer(c, "200 OK", &[], b"{}")
            }
        },
    ))
}

#[test]
fn a_layer_that_trickles_forever_fails_at_its_deadline() {
    let reg = trickle_registry();
    let (_d, store) = common::store();
    let opts = PullOptions {
        tls_verify: false,
        deadline: BlobDeadline {
            base: Duration::from_secs(2),
            min_rate: 1 << 30,
        },
        ..Default::default()
    };
    let (tx, rx) = mpsc::channel();
    let reference = format!("{}/repo:latest", reg.addr);
    let t0 = Instant::now();
    // A thread of its own, not joined on failure: when the guard below
    // fires, dropping `reg` stops the trickle and ends the pull.
    let pull = std::thread::spawn(move || {
        let res = store.pull(&reference, &opts, &registry::NoProgress);
        let _ = tx.send(res.map(|p| p.id));
        store
    });
    // Without a total deadline the pull would go on for 80 minutes: fail
    // instead of hanging the test run.
    let res = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the pull of a trickling layer did not end");
    let err = res.expect_err("a trickling layer was pulled").to_string();
    println!("ended after {:?}: {err}", t0.elapsed());
    assert!(
        err.contains("the deadline for its size") && err.contains("too slow or stalled"),
        "not the deadline error: {err}"
    );
    assert!(!err.contains('\n'), "not one line: {err}");
    let store = pull.join().unwrap();
    assert!(
        store.images().unwrap().is_empty(),
        "a refused pull left an image"
    );
}
