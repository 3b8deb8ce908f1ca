//! `strata` as an ordinary user: the test makes a user with subordinate id
//! ranges and runs the `strata` binary as that user (`runuser`), with the
//! default store (`~/.local/share/strata`) and run directory
//! (`$XDG_RUNTIME_DIR/strata`): load, run with `-p`, exec, commit, build,
//! push and pull against a loopback registry. It also checks the one-line
//! errors for what a rootless user may lack.
//!
//! This machine's `/dev/fuse` and `/dev/net/tun` are 0600 (Debian makes
//! them 0666): the tests open them to all for their run and put the modes
//! back on drop. One lock serialises the tests of this file, which share
//! those modes; the user, its id ranges, its processes (the pause process
//! among them) and its files go on drop, also when a step fails.

mod common;
mod registry_support;

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use common::Run;
use strata_tests::sys::DevicesOpen;
use strata_tests::users::TestUser;

static DEVICES: Mutex<()> = Mutex::new(());

/// A test user (strata_tests::users) with a copy of `strata` it may run.
struct User {
    user: TestUser,
    /// The first id of its subordinate range, if it has one.
    base: Option<u32>,
    exe: PathBuf,
}

impl std::ops::Deref for User {
    type Target = TestUser;
    fn deref(&self) -> &TestUser {
        &self.user
    }
}

impl User {
    fn new(tag: &str, with_range: bool) -> User {
        let base = with_range.then(|| 600_000 + (std::process::id() % 1000) * 65_536);
        let user = TestUser::new("strt", tag, base);
        let exe = user.dir.path().join("strata");
        std::fs::copy(env!("CARGO_BIN_EXE_strata"), &exe).unwrap();
        User { user, base, exe }
    }

    fn strata(&self, args: &[&str]) -> Run {
        Command::new("runuser")
            .args(["-u", &self.name, "--", "env", "-i"])
            .arg(format!("HOME={}", self.home().display()))
            .arg(format!("XDG_RUNTIME_DIR={}", self.run_dir().display()))
            .arg("PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .arg(&self.exe)
            .args(args)
            .current_dir(self.home())
            .stdin(Stdio::null())
            .output()
            .expect("run strata as the user")
            .into()
    }

    fn ok(&self, args: &[&str]) -> String {
        let r = self.strata(args);
        assert_eq!(r.code, 0, "rootless strata {args:?}: {r:?}");
        r.stdout
    }
}

impl Drop for User {
    fn drop(&mut self) {
        // Then TestUser's drop: what still runs as the user (supervisors
        // left by a failed step, the pause process), the user, its ranges.
        let _ = self.strata(&["rm", "-f", "web"]);
    }
}

/// One HTTP/1.0 GET from the host; the body, empty while nothing answers.
fn http_get(port: u16, path: &str) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(10)));
    if write!(s, "GET {path} HTTP/1.0\r\n\r\n").is_err() {
        return String::new();
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn have_uidmap() -> bool {
    registry_support::have("newuidmap", "uidmap")
}

#[test]
fn an_ordinary_user_runs_builds_commits_pushes_and_pulls() {
    if !have_uidmap() {
        return;
    }
    let _serial = DEVICES.lock().unwrap_or_else(|e| e.into_inner());
    let _open = DevicesOpen::set(&["/dev/fuse", "/dev/net/tun"], 0o666);
    let u = User::new("a", true);
    let base = u.base.unwrap();
    let archive = u.give("busybox.tar", &common::fixture());
    u.ok(&["load", "-i", archive.to_str().unwrap()]);
    assert!(u.ok(&["images"]).contains("localhost/busybox"));

    // The store and run state are the user's, where XDG says.
    let store = u.home().join(".local/share/strata");
    assert_eq!(std::fs::metadata(&store).unwrap().uid(), u.uid);
    let pause = u.run_dir().join("strata/pause.pid");
    assert!(pause.is_file(), "no pause process recorded");
    // Root of the image is the user on disk (no chown storm: extraction
    // gave each file its owner through the namespace's mapping).
    let layers = store.join("layers");
    let any_layer = std::fs::read_dir(&layers).unwrap().next().unwrap().unwrap();
    let bin = any_layer.path().join("diff/bin");
    assert_eq!(std::fs::metadata(&bin).unwrap().uid(), u.uid);

    // Inside: root, the subordinate range mapped.
    let out = u.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "busybox",
        "sh",
        "-c",
        "id -u; cat /proc/self/uid_map",
    ]);
    assert!(out.starts_with("0\n"), "{out}");
    assert!(out.contains(&base.to_string()), "{out}");

    // The host's network (sysfs cannot be mounted there: /sys is bound).
    let out = u.ok(&[
        "run",
        "--rm",
        "--network",
        "host",
        "busybox",
        "sh",
        "-c",
        "ls /sys/class/net | grep -c lo",
    ]);
    assert_eq!(out, "1\n");

    // slirp4netns, the other user-mode network.
    let out = u.ok(&[
        "run",
        "--rm",
        "--network",
        "slirp4netns",
        "busybox",
        "ip",
        "-4",
        "addr",
        "show",
        "tap0",
    ]);
    assert!(out.contains("10.0.2.100"), "{out}");

    // A web server published on the host's loopback (pasta).
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:80");
    u.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        &publish,
        "busybox",
        "sh",
        "-c",
        "mkdir -p /www && echo hello > /www/index.html && exec httpd -f -p 80 -h /www",
    ]);
    let mut body = String::new();
    for _ in 0..100 {
        body = http_get(port, "/index.html");
        if body == "hello\n" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(body, "hello\n");
    assert!(u
        .ok(&["port", "web"])
        .contains(&format!("127.0.0.1:{port}")));

    // The pause process killed alone: the next command finds the namespace
    // through the running container's supervisor (not a new namespace, from
    // which `exec` could not enter the container).
    let old: i32 = std::fs::read_to_string(&pause)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    while std::fs::metadata(format!("/proc/{old}/ns")).is_ok() {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(u.ok(&["exec", "web", "cat", "/www/index.html"]), "hello\n");

    // `strata mount` mounts in the user's namespace: seen under `unshare`,
    // where strata uses the user's store; stats has no cgroup to read.
    let inside = format!("cat \"$({} mount web)/www/index.html\"", u.exe.display());
    assert_eq!(u.ok(&["unshare", "sh", "-c", &inside]), "hello\n");
    let r = u.strata(&["stats", "--no-stream"]);
    assert!(r.code == 125 && r.stderr.contains("cgroup"), "{r:?}");

    // exec: what rootless podman users hit first (rename of an image
    // directory, rm -rf then mkdir, hard links, owners of the range).
    u.ok(&[
        "exec",
        "web",
        "sh",
        "-c",
        "mv /etc /etc2 && rm -rf /root && mkdir /root && ln /bin/busybox /bb2 \
         && touch /owned && chown 1234:5678 /owned",
    ]);
    let upper_owned = std::fs::read_dir(store.join("containers"))
        .unwrap()
        .map(|e| e.unwrap().path().join("upper/owned"))
        .find(|p| p.exists())
        .expect("the container's upper directory");
    let m = std::fs::metadata(&upper_owned).unwrap();
    assert_eq!(
        (m.uid(), m.gid()),
        (base + 1233, base + 5677),
        "owner on disk"
    );
    // cp both ways, export.
    let note = u.home().join("note.txt");
    std::fs::write(&note, "from the host\n").unwrap();
    u.give_path(&note);
    u.ok(&["cp", note.to_str().unwrap(), "web:/note.txt"]);
    u.ok(&["cp", "web:/etc2/passwd", "passwd.out"]);
    assert!(std::fs::read_to_string(u.home().join("passwd.out"))
        .unwrap()
        .starts_with("root:"));
    u.ok(&["export", "-o", "web.tar", "web"]);
    let listing = Command::new("tar")
        .args(["-tf"])
        .arg(u.home().join("web.tar"))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing
            .lines()
            .any(|l| l.trim_start_matches("./") == "note.txt"),
        "{listing}"
    );
    u.ok(&["stop", "-t", "1", "web"]);
    u.ok(&["commit", "web", "mine:1"]);
    u.ok(&["rm", "web"]);
    let out = u.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "mine:1",
        "sh",
        "-c",
        "ls -d /etc2 /root; test ! -e /etc && echo gone; stat -c '%i %h' /bb2 /bin/busybox; stat -c '%u:%g' /owned",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..3], ["/etc2", "/root", "gone"], "{out}");
    assert_eq!(lines[3], lines[4], "hard link kept: {out}");
    assert_eq!(lines[5], "1234:5678", "{out}");

    // build: RUN steps that delete, rename and hard-link image files, COPY.
    let ctx = u.home().join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    std::fs::write(
        ctx.join("Containerfile"),
        "FROM mine:1\nRUN rm -rf /etc2 && mv /root /root2 && ln /bb2 /bb3 && echo built > /built\nCOPY f.txt /f.txt\n",
    )
    .unwrap();
    std::fs::write(ctx.join("f.txt"), "copied\n").unwrap();
    for p in [&ctx, &ctx.join("Containerfile"), &ctx.join("f.txt")] {
        u.give_path(p);
    }
    u.ok(&["build", "-t", "built:1", ctx.to_str().unwrap()]);
    let check = "cat /built /f.txt; test ! -e /etc2 && test -d /root2 && stat -c %h /bb3";
    let out = u.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "built:1",
        "sh",
        "-c",
        check,
    ]);
    assert_eq!(out, "built\ncopied\n3\n");

    // push and pull through a registry on the host's loopback.
    let Some(reg) = registry_support::Registry::start(None) else {
        return;
    };
    let remote = format!("{}/rootless/built:1", reg.addr);
    u.ok(&["save", "-o", "built.tar", "built:1"]);
    assert!(std::fs::metadata(u.home().join("built.tar")).unwrap().len() > 1000);
    u.ok(&["push", "built:1", &remote]);
    u.ok(&["rmi", "built:1"]);
    u.ok(&["pull", &remote]);
    let out = u.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        &remote,
        "sh",
        "-c",
        check,
    ]);
    assert_eq!(out, "built\ncopied\n3\n");
}

#[test]
fn what_a_rootless_user_lacks_is_named_in_one_line() {
    if !have_uidmap() {
        return;
    }
    let _serial = DEVICES.lock().unwrap_or_else(|e| e.into_inner());
    // No subordinate ids.
    let bare = User::new("b", false);
    let r = bare.strata(&["images"]);
    assert_eq!(r.code, 125, "{r:?}");
    assert!(
        r.stderr.contains("/etc/subuid") && r.stderr.contains("usermod"),
        "{r:?}"
    );
    assert_eq!(r.stderr.trim().lines().count(), 1, "{r:?}");
    drop(bare);

    let u = User::new("c", true);
    let archive = u.give("busybox.tar", &common::fixture());
    u.ok(&["load", "-i", archive.to_str().unwrap()]);
    // /dev/fuse closed to the user: fusermount3 cannot help in a user
    // namespace, so the error says what to change.
    {
        let _closed = DevicesOpen::set(&["/dev/fuse"], 0o600);
        let r = u.strata(&["run", "--rm", "--network", "none", "busybox", "true"]);
        assert_eq!(r.code, 125, "{r:?}");
        assert!(
            r.stderr.contains("/dev/fuse") && r.stderr.contains("0666"),
            "{r:?}"
        );
    }
    // /dev/net/tun closed: user-mode networking cannot start.
    let _fuse = DevicesOpen::set(&["/dev/fuse"], 0o666);
    let _tun = DevicesOpen::set(&["/dev/net/tun"], 0o600);
    let r = u.strata(&["run", "--rm", "busybox", "true"]);
    assert_eq!(r.code, 125, "{r:?}");
    assert!(
        r.stderr.contains("/dev/net/tun") && r.stderr.contains("--network none"),
        "{r:?}"
    );
    // And nothing is left running for it but the pause process.
    assert_eq!(u.ok(&["ps", "-q"]), "");
}
