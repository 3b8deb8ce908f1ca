//! Test support: the snapshotter, Debian's containerd configured to use it
//! as a proxy plugin, and a loopback registry holding the fixture images,
//! each started in a directory of its own and stopped (with everything it
//! mounted or spawned) when its guard drops, even when a test fails.

#![allow(dead_code)]

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use strata_snapshotter::client;
use strata_snapshotter::proto::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
use tonic::transport::Channel;

/// Whether a tool is installed; on CI (`CI` set) a missing one fails.
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
        println!("SKIPPED: {tool} is not installed (Debian package {package})");
    }
    ok
}

/// Everything the containerd tests need is installed.
pub fn have_containerd_tools() -> bool {
    have("containerd", "containerd")
        && have("ctr", "containerd")
        && have("runc", "runc")
        && have("/usr/bin/docker-registry", "docker-registry")
        && have("skopeo", "skopeo")
        && have("mount.fuse3", "fuse3")
}

/// Polls `f` until it returns `Some`, failing with `what` after `secs`.
pub fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A fresh directory with a short name (unix socket paths are limited).
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("stsn")
        .tempdir_in("/tmp")
        .expect("create a directory under /tmp")
}

/// The strata-mount this build made (target/debug/strata-mount).
pub fn strata_mount() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let debug = exe.parent().and_then(Path::parent).unwrap();
    let p = debug.join("strata-mount");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build -p strata-fs` first (scripts/test builds the workspace)",
        p.display()
    );
    p
}

/// A directory holding `strata-mount`, a wrapper that appends each command
/// line it is run with to `mount.log` beside it and runs the real one:
/// what containerd mounts through FUSE, and how, shows in the log.
pub struct MountProgram {
    pub bin: PathBuf,
    pub log: PathBuf,
}

impl MountProgram {
    pub fn new(dir: &Path) -> MountProgram {
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let log = dir.join("mount.log");
        let script = format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\nexec '{}' \"$@\"\n",
            log.display(),
            strata_mount().display()
        );
        let w = bin.join("strata-mount");
        std::fs::write(&w, script).unwrap();
        std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o755)).unwrap();
        MountProgram { bin, log }
    }

    /// The invocations so far, one a line.
    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// `PATH` with the wrapper first.
    pub fn path_env(&self) -> String {
        format!(
            "{}:{}",
            self.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }
}

/// A running strata-snapshotter.
pub struct Snapshotter {
    child: Option<Child>,
    pub root: PathBuf,
    pub socket: PathBuf,
    log: PathBuf,
}

impl Snapshotter {
    /// Starts one on `dir/snap` with its socket at `dir/snap.sock`.
    pub fn start(dir: &Path) -> Snapshotter {
        let mut s = Snapshotter {
            child: None,
            root: dir.join("snap"),
            socket: dir.join("snap.sock"),
            log: dir.join("snapshotter.log"),
        };
        s.spawn(None);
        s
    }

    /// (Re)starts the process, told to crash at `crash_at` if given, and
    /// waits until it accepts connections.
    pub fn spawn(&mut self, crash_at: Option<&str>) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata-snapshotter"));
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--address")
            .arg(&self.socket)
            .arg("--log")
            .arg("info,strata_snapshotter=debug")
            .env_remove(strata_snapshotter::crash::CRASH_AT_ENV)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(p) = crash_at {
            cmd.env(strata_snapshotter::crash::CRASH_AT_ENV, p);
        }
        let mut child = cmd.spawn().expect("start strata-snapshotter");
        let sock = self.socket.clone();
        wait_for("the snapshotter's socket", 15, || {
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "strata-snapshotter exited at start ({st}): {}",
                    self.log_text()
                );
            }
            std::os::unix::net::UnixStream::connect(&sock).ok()
        });
        self.child = Some(child);
    }

    /// kill -9, and wait for it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for a process told to crash to have killed itself; fails if it
    /// exited any other way.
    pub fn wait_crashed(&mut self) {
        let mut c = self.child.take().expect("running");
        let st = wait_for("the snapshotter to reach its crash point", 60, || {
            c.try_wait().unwrap()
        });
        assert_eq!(
            st.signal(),
            Some(9),
            "expected a SIGKILL crash, got {st}: {}",
            self.log_text()
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A gRPC client on its socket.
    pub fn client(&self, rt: &tokio::runtime::Runtime) -> SnapshotsClient<Channel> {
        rt.block_on(client::connect(&self.socket))
            .expect("connect to the snapshotter")
    }

    /// Snapshot directories on disk (names under ROOT/snapshots), sorted.
    pub fn dirs(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.root.join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// The ids the metadata file records, as directory names, sorted.
    pub fn recorded_ids(&self) -> Vec<String> {
        let md: serde_json::Value = serde_json::from_slice(
            &std::fs::read(self.root.join("metadata.json"))
                .unwrap_or_else(|_| b"{\"snapshots\":{}}".to_vec()),
        )
        .unwrap();
        let mut v: Vec<String> = md["snapshots"]
            .as_object()
            .unwrap()
            .values()
            .map(|r| r["id"].to_string())
            .collect();
        v.sort();
        v
    }
}

impl Drop for Snapshotter {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
    }
}

/// A multi-threaded runtime for the gRPC client.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The loopback registry (Debian's docker-registry), with the fixture
/// images pushed into it.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

impl Registry {
    pub fn start(dir: &Path) -> Registry {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let cfg = dir.join("registry.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.join("registry").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("registry.log")).unwrap();
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let r = Registry { child, addr };
        wait_for("the registry", 15, || {
            std::net::TcpStream::connect(&r.addr).ok()
        });
        r
    }

    /// Pushes the docker-archive fixture `name` (tests/fixtures/NAME-docker-archive.tar)
    /// as `ADDR/NAME:latest`, and returns that reference.
    pub fn push_fixture(&self, name: &str) -> String {
        let archive = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures")
            .join(format!("{name}-docker-archive.tar"));
        let reference = format!("{}/{name}:latest", self.addr);
        let out = Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("docker-archive:{}", archive.display()))
            .arg(format!("docker://{reference}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo copy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        reference
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The output of a command, readable.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
    /// Asserts success and returns stdout.
    pub fn ok(self) -> String {
        assert_eq!(self.code, 0, "failed: {}\n{}", self.stderr, self.stdout);
        self.stdout
    }
}

/// Debian's containerd with its own root, state, socket and config, the
/// snapshotter as proxy plugin `strata`, and `strata-mount` (the logging
/// wrapper) first in its `PATH`.
pub struct Containerd {
    child: Option<Child>,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub namespace: String,
    pub mount: MountProgram,
}

impl Containerd {
    pub fn start(dir: &Path, snapshotter_socket: &Path, namespace: &str) -> Containerd {
        let mount = MountProgram::new(dir);
        let socket = dir.join("containerd.sock");
        let cfg = dir.join("containerd.toml");
        std::fs::write(
            &cfg,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""

[proxy_plugins]
  [proxy_plugins.strata]
    type = "snapshot"
    address = "{snap}"
"#,
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                sock = socket.display(),
                snap = snapshotter_socket.display(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&cfg)
            .env("PATH", mount.path_env())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let c = Containerd {
            child: Some(child),
            dir: dir.to_path_buf(),
            socket,
            // runc keeps its state in /run/containerd/runc/NAMESPACE/ID
            // whatever containerd's state dir: unique per test process.
            namespace: format!("{namespace}-{}", std::process::id()),
            mount,
        };
        wait_for("containerd", 20, || {
            (c.ctr(&["version"]).code == 0).then_some(())
        });
        c
    }

    /// Runs `ctr --address SOCK -n NS ARGS`, with the wrapper in `PATH`
    /// (ctr mounts images itself to read their /etc/passwd).
    pub fn ctr(&self, args: &[&str]) -> Run {
        Run::from(
            Command::new("ctr")
                .arg("--address")
                .arg(&self.socket)
                .arg("-n")
                .arg(&self.namespace)
                .args(args)
                .env("PATH", self.mount.path_env())
                .stdin(Stdio::null())
                .output()
                .unwrap(),
        )
    }

    /// `ctr snapshots --snapshotter SN ARGS`.
    pub fn snapshots(&self, sn: &str, args: &[&str]) -> Run {
        let mut a = vec!["snapshots", "--snapshotter", sn];
        a.extend_from_slice(args);
        self.ctr(&a)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// Mount points under the test's directory.
    pub fn mounts_inside(&self) -> Vec<String> {
        let prefix = format!("{}/", self.dir.display());
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&prefix))
            .map(str::to_string)
            .collect()
    }
}

/// Pids whose command line mentions `needle`.
fn pids_mentioning(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(needle) {
                out.push(pid);
            }
        }
    }
    out
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // The shims it started (their command line names its socket) and
        // the containers under them.
        let sock = self.socket.display().to_string();
        for pid in pids_mentioning(&sock) {
            if Some(pid) != self.child.as_ref().map(|c| c.id() as i32) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
        // Whatever is still mounted below the test's directory (rootfs of
        // a container of a failed test), innermost first.
        let mut mounts = self.mounts_inside();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        // runc's state directory for the namespace, host-wide (empty once
        // every container is gone).
        let _ = std::fs::remove_dir(Path::new("/run/containerd/runc").join(&self.namespace));
    }
}

/// A layer to add to an image: tar entries, in order.
pub enum Entry<'a> {
    Dir(&'a str),
    File(&'a str, &'a str),
}

impl Registry {
    /// Pushes the fixture `base` with `layers` added on top as
    /// `ADDR/NAME:latest` (an OCI image with uncompressed layers), and
    /// returns that reference. Whiteouts are written as tar files
    /// `.wh.NAME` and `.wh..wh..opq`, as image layers carry them.
    pub fn push_layered(&self, dir: &Path, base: &str, name: &str, layers: &[&[Entry]]) -> String {
        use sha2::{Digest, Sha256};
        let layout = dir.join(format!("oci-{name}"));
        let archive = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures")
            .join(format!("{base}-docker-archive.tar"));
        let out = Command::new("skopeo")
            .args(["copy", "--quiet"])
            .arg(format!("docker-archive:{}", archive.display()))
            .arg(format!("oci:{}:{name}", layout.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo copy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let blobs = layout.join("blobs/sha256");
        let read_json = |digest: &str| -> serde_json::Value {
            serde_json::from_slice(
                &std::fs::read(blobs.join(digest.trim_start_matches("sha256:"))).unwrap(),
            )
            .unwrap()
        };
        let write_blob = |bytes: &[u8]| -> (String, usize) {
            let d = hex::encode(Sha256::digest(bytes));
            std::fs::write(blobs.join(&d), bytes).unwrap();
            (format!("sha256:{d}"), bytes.len())
        };
        let mut index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let mut manifest = read_json(index["manifests"][0]["digest"].as_str().unwrap());
        let mut config = read_json(manifest["config"]["digest"].as_str().unwrap());
        for entries in layers {
            let mut b = tar::Builder::new(Vec::new());
            for e in *entries {
                let mut h = tar::Header::new_gnu();
                h.set_uid(0);
                h.set_gid(0);
                h.set_mtime(0);
                match e {
                    Entry::Dir(p) => {
                        h.set_entry_type(tar::EntryType::Directory);
                        h.set_mode(0o755);
                        h.set_size(0);
                        b.append_data(&mut h, p, std::io::empty()).unwrap();
                    }
                    Entry::File(p, content) => {
                        h.set_entry_type(tar::EntryType::Regular);
                        h.set_mode(0o644);
                        h.set_size(content.len() as u64);
                        b.append_data(&mut h, p, content.as_bytes()).unwrap();
                    }
                }
            }
            let tar = b.into_inner().unwrap();
            let (digest, size) = write_blob(&tar);
            manifest["layers"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": digest,
                    "size": size,
                }));
            config["rootfs"]["diff_ids"]
                .as_array_mut()
                .unwrap()
                .push(digest.into());
        }
        if let Some(h) = config.get_mut("history") {
            // History entries are optional; drop them rather than count them.
            *h = serde_json::json!([]);
        }
        let (digest, size) = write_blob(&serde_json::to_vec(&config).unwrap());
        manifest["config"]["digest"] = digest.into();
        manifest["config"]["size"] = size.into();
        let (digest, size) = write_blob(&serde_json::to_vec(&manifest).unwrap());
        index["manifests"][0]["digest"] = digest.into();
        index["manifests"][0]["size"] = size.into();
        std::fs::write(
            layout.join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
        let reference = format!("{}/{name}:latest", self.addr);
        let out = Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:{name}", layout.display()))
            .arg(format!("docker://{reference}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo copy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        reference
    }
}
