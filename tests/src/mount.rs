//! Mounting a layer stack with the kernel's overlayfs or with a
//! fuse-overlayfs-compatible mount program (strata-mount by default), and the
//! guard that unmounts it.
//!
//! Invariants: a [`Mounted`] owns its temporary root (layers, upper, work and
//! mountpoint all live under it); dropping it unmounts (lazily if busy),
//! waits a bounded time for the FUSE server to exit (killing it if it does
//! not), and only then removes the directories. If unmounting fails the
//! directories are left on disk rather than removed through a live mount.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::mount::{umount2, MntFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::fixture::Layers;
use crate::transport::{self, UringEnabled};

/// How long a mount program may take to mount or a server to exit.
pub const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a FUSE mount may stay up before the watchdog decides the server
/// hung and kills it, so that the test's blocked syscalls fail with ENOTCONN
/// instead of hanging the suite (and CI) forever.
pub const HANG_TIMEOUT: Duration = Duration::from_secs(300);

/// Kills `servers` if not stopped within [`HANG_TIMEOUT`].
struct Watchdog {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn start(mnt: PathBuf, servers: Vec<i32>, timeout: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            while !flag.load(Ordering::SeqCst) {
                if start.elapsed() > timeout {
                    eprintln!(
                        "watchdog: {} has been mounted for {timeout:?}; the server looks hung, killing {servers:?}",
                        mnt.display()
                    );
                    for &pid in &servers {
                        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    }
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Watchdog {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A fresh temporary directory under /tmp, short-named (kernel mount options
/// are limited to a page).
pub fn temp_root() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("st")
        .tempdir_in("/tmp")
        .expect("create a temporary directory under /tmp")
}

/// The mount program under test: `$STRATA_MOUNT` if set, else strata-mount
/// from this build's target directory, `$CARGO_TARGET_DIR/debug` or the
/// workspace's `target/debug`. Panics with what to do when none exists.
pub fn strata_program() -> PathBuf {
    if let Some(p) = std::env::var_os("STRATA_MOUNT") {
        return PathBuf::from(p);
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // target/debug/deps/<test binary>
        if let Some(debug) = exe.parent().and_then(Path::parent) {
            candidates.push(debug.join("strata-mount"));
        }
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(dir).join("debug/strata-mount"));
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/strata-mount"));
    for c in &candidates {
        if c.is_file() {
            return c.clone();
        }
    }
    panic!(
        "the mount program under test was not found (looked at {}); run `cargo build -p strata-fs` \
         first, or set STRATA_MOUNT to a fuse-overlayfs-compatible program such as /usr/bin/fuse-overlayfs",
        candidates.iter().map(|c| c.display().to_string()).collect::<Vec<_>>().join(", ")
    );
}

/// What serves a mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// The kernel's overlayfs (`redirect_dir=nofollow,index=off,metacopy=off`).
    Kernel,
    /// A fuse-overlayfs-compatible mount program.
    Program(PathBuf),
}

impl Backend {
    /// The program under test (see [`strata_program`]).
    pub fn strata() -> Self {
        Backend::Program(strata_program())
    }
    /// A short name for reports.
    pub fn name(&self) -> String {
        match self {
            Backend::Kernel => "kernel".into(),
            Backend::Program(p) => p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        }
    }
    /// Whether this is the kernel's overlayfs.
    pub fn is_kernel(&self) -> bool {
        matches!(self, Backend::Kernel)
    }
}

/// Whether `path` is a mount point in this mount namespace.
pub fn is_mountpoint(path: &Path) -> bool {
    let want = path.to_string_lossy().replace(' ', "\\040");
    fs::read_to_string("/proc/self/mountinfo")
        .expect("read mountinfo")
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// The filesystem type of the mount at `path` (e.g. `fuse.fuse-overlayfs`).
pub fn mount_fstype(path: &Path) -> Option<String> {
    let want = path.to_string_lossy().replace(' ', "\\040");
    let info = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    info.lines().rev().find_map(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        if fields.get(4) != Some(&want.as_str()) {
            return None;
        }
        let sep = fields.iter().position(|f| *f == "-")?;
        fields.get(sep + 1).map(|s| s.to_string())
    })
}

fn process_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // state is the field after the ")" closing comm
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

/// Live processes (other than this one) with `arg` among their arguments.
pub fn pids_with_arg(arg: &Path) -> Vec<i32> {
    let want = arg.as_os_str().as_encoded_bytes();
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline.split(|&b| b == 0).any(|a| a == want) && process_alive(pid) {
            out.push(pid);
        }
    }
    out
}

/// Polls until `pid` has exited (or is a zombie), at most `timeout`.
/// Returns whether it exited.
pub fn wait_process_gone(pid: i32, timeout: Duration) -> bool {
    let start = Instant::now();
    while process_alive(pid) {
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// The result of running a mount program to completion.
#[derive(Debug)]
pub struct Outcome {
    /// Its exit status, or None if it did not exit in time (then it was
    /// killed).
    pub status: Option<ExitStatus>,
    /// What it wrote to stderr (a file, so a daemon keeping it open cannot
    /// block us).
    pub stderr: String,
    /// The pid of the process we started.
    pub pid: i32,
}

impl Outcome {
    /// Exited with status 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

/// Runs `prog args...` with stdin and stdout on /dev/null, in `cwd`, waiting
/// at most [`PROCESS_TIMEOUT`] for it to exit.
pub fn run_program(prog: &Path, args: &[OsString], cwd: &Path, stderr_file: &Path) -> Outcome {
    run_program_for(prog, args, cwd, stderr_file, PROCESS_TIMEOUT)
}

/// [`run_program`] with another bound on the wait.
pub fn run_program_for(
    prog: &Path,
    args: &[OsString],
    cwd: &Path,
    stderr_file: &Path,
    timeout: Duration,
) -> Outcome {
    let err = fs::File::create(stderr_file).expect("create stderr file");
    let mut child = Command::new(prog)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", prog.display()));
    let pid = child.id() as i32;
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for mount program") {
            break Some(s);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stderr = fs::read_to_string(stderr_file).unwrap_or_default();
    Outcome {
        status,
        stderr,
        pid,
    }
}

/// A materialized layer stack, mounted or not, that cleans up on drop.
pub struct Mounted {
    root: Option<tempfile::TempDir>,
    root_path: PathBuf,
    lowers: Vec<PathBuf>,
    upper: Option<PathBuf>,
    work: Option<PathBuf>,
    mnt: PathBuf,
    backend: Backend,
    live: bool,
    servers: Vec<i32>,
    watchdog: Option<Watchdog>,
    extra: Option<String>,
    /// Held while a strata mount over io_uring is live (see
    /// [`crate::transport`]).
    uring: Option<UringEnabled>,
    /// Holds the upper and work directories when they live on another
    /// filesystem (see [`crate::upperfs`]).
    upper_home: Option<tempfile::TempDir>,
}

impl Layers {
    /// Materializes the stack (for `backend`) and mounts it there.
    pub fn mount(&self, backend: &Backend) -> Mounted {
        let mut m = self.materialize(backend.is_kernel());
        m.mount_again(backend.clone(), false);
        m
    }
    /// Mounts a fresh copy with the kernel's overlayfs.
    pub fn mount_kernel(&self) -> Mounted {
        self.mount(&Backend::Kernel)
    }
    /// Mounts a fresh copy with the program under test.
    pub fn mount_strata(&self) -> Mounted {
        self.mount(&Backend::strata())
    }
    /// Writes a fresh copy of the stack under a new temporary root, without
    /// mounting: `l/0` is the topmost lower, `u` the upper, `w` the work
    /// directory and `m` the empty mountpoint.
    pub fn materialize(&self, kernel_native: bool) -> Mounted {
        let root = temp_root();
        let root_path = root.path().to_path_buf();
        let n = self.lowers.len();
        let mut lowers = Vec::with_capacity(n);
        for (top_index, layer) in self.lowers.iter().rev().enumerate() {
            let dir = root_path.join("l").join(top_index.to_string());
            fs::create_dir_all(&dir).expect("mkdir lower");
            layer.materialize(&dir, kernel_native);
            lowers.push(dir);
        }
        let upper_home = if self.read_only {
            None
        } else {
            crate::upperfs::upper_home(kernel_native)
        };
        let (upper, work) = if self.read_only {
            (None, None)
        } else {
            let home = upper_home
                .as_ref()
                .map_or(root_path.as_path(), |h| h.path());
            let (u, w) = (home.join("u"), home.join("w"));
            fs::create_dir(&u).expect("mkdir upper");
            fs::create_dir(&w).expect("mkdir work");
            self.upper.materialize(&u, kernel_native);
            (Some(u), Some(w))
        };
        let mnt = root_path.join("m");
        fs::create_dir(&mnt).expect("mkdir mountpoint");
        Mounted {
            root: Some(root),
            root_path,
            lowers,
            upper,
            work,
            mnt,
            backend: Backend::Kernel,
            live: false,
            servers: Vec::new(),
            watchdog: None,
            extra: None,
            uring: None,
            upper_home,
        }
    }
}

impl Mounted {
    /// The mountpoint (the merged view).
    pub fn path(&self) -> &Path {
        &self.mnt
    }
    /// `path` inside the merged view.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.mnt.join(rel)
    }
    /// The temporary root holding everything.
    pub fn root(&self) -> &Path {
        &self.root_path
    }
    /// The lower layer directories in `lowerdir=` order (topmost first).
    pub fn lowers(&self) -> &[PathBuf] {
        &self.lowers
    }
    /// The upper directory (panics for a read-only stack).
    pub fn upper(&self) -> &Path {
        self.upper
            .as_deref()
            .expect("this stack has no upper directory")
    }
    /// Whether the stack has an upper directory (it is not read-only).
    pub fn has_upper(&self) -> bool {
        self.upper.is_some()
    }
    /// The work directory (panics for a read-only stack).
    pub fn work(&self) -> &Path {
        self.work
            .as_deref()
            .expect("this stack has no work directory")
    }
    /// What serves (or served) the mount.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }
    /// Whether the mount is up.
    pub fn is_live(&self) -> bool {
        self.live
    }
    /// The FUSE server processes found after mounting (empty for the kernel).
    pub fn servers(&self) -> &[i32] {
        &self.servers
    }

    /// Adds `dir` (an outside directory, such as another mount) as the
    /// bottom lower layer from the next mount on.
    pub fn push_lower(&mut self, dir: &Path) {
        self.lowers.push(dir.to_path_buf());
    }

    /// Mount options added after the usual ones from the next mount on
    /// (`metacopy=on`); for the kernel they override its defaults.
    pub fn set_extra_options(&mut self, extra: Option<&str>) {
        self.extra = extra.map(str::to_string);
    }

    fn lowers_option(&self) -> String {
        let lowers: Vec<String> = self
            .lowers
            .iter()
            .map(|l| escape_colon(&l.to_string_lossy()))
            .collect();
        format!("lowerdir={}", lowers.join(":"))
    }

    /// The `-o` option string for a mount program, with absolute paths.
    pub fn program_options(&self) -> String {
        let mut o = self.lowers_option();
        if let (Some(u), Some(w)) = (&self.upper, &self.work) {
            o.push_str(&format!(
                ",upperdir={},workdir={}",
                u.display(),
                w.display()
            ));
        }
        if let Some(x) = &self.extra {
            o.push(',');
            o.push_str(x);
        }
        o
    }

    /// Mounts the same directories again with `backend` (the previous mount
    /// must be unmounted). With `fresh_work` a new empty work directory is
    /// used, as a different tool mounting this upper would.
    pub fn mount_again(&mut self, backend: Backend, fresh_work: bool) {
        assert!(!self.live, "already mounted");
        if fresh_work && self.work.is_some() {
            let mut i = 0;
            let w = loop {
                let w = self.root_path.join(format!("w{i}"));
                if !w.exists() {
                    break w;
                }
                i += 1;
            };
            fs::create_dir(&w).expect("mkdir work");
            self.work = Some(w);
        }
        self.backend = backend;
        match self.backend.clone() {
            Backend::Kernel => self.mount_kernel_now(),
            Backend::Program(prog) => self.mount_program_now(&prog),
        }
        self.live = true;
    }

    fn mount_kernel_now(&mut self) {
        // Relative lower names from a cwd of root/l keep the option string
        // short enough for the kernel's one-page limit even with 128 lowers.
        let names: Vec<String> = (0..self.lowers.len()).map(|i| i.to_string()).collect();
        let mut o = format!("lowerdir={}", names.join(":"));
        if let (Some(u), Some(w)) = (&self.upper, &self.work) {
            o.push_str(&format!(
                ",upperdir={},workdir={}",
                u.display(),
                w.display()
            ));
        }
        o.push_str(",redirect_dir=nofollow,index=off,metacopy=off");
        if crate::upperfs::in_userns() {
            o.push_str(",userxattr");
        }
        if let Some(x) = &self.extra {
            // metacopy=on needs redirect_dir=on in the kernel.
            if x.contains("metacopy=on") {
                o = o.replace("redirect_dir=nofollow", "redirect_dir=on");
            }
            o.push(',');
            o.push_str(x);
        }
        let out = Command::new("mount")
            .current_dir(self.root_path.join("l"))
            .args(["-t", "overlay", "overlay", "-o", &o])
            .arg(&self.mnt)
            .output()
            .expect("run mount(8)");
        assert!(
            out.status.success(),
            "kernel overlay mount failed ({}): {}",
            o,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The transport stats file of a strata mount in a `_uring` binary.
    fn transport_stats(&self) -> PathBuf {
        self.root_path.join("transport.stats")
    }

    fn mount_program_now(&mut self, prog: &Path) {
        let mut options = self.program_options();
        if prog == strata_program() {
            // This binary's transport, before the test's own options (which
            // may name their own stats file).
            let mut o = format!("{},{}", self.lowers_option(), transport::mount_option());
            if transport::uring() {
                self.uring = Some(UringEnabled::acquire());
                o.push_str(&format!(",stats={}", self.transport_stats().display()));
            }
            options = options.replacen(&self.lowers_option(), &o, 1);
        }
        let args: Vec<OsString> = vec!["-o".into(), options.into(), self.mnt.clone().into()];
        let stderr_file = self.root_path.join("mount.stderr");
        let out = run_program(prog, &args, &self.root_path, &stderr_file);
        let servers = pids_with_arg(&self.mnt);
        if !out.success() || !is_mountpoint(&self.mnt) {
            // Say whether the mount showed up later (the program exited 0
            // before the mount was live) or never, and whether a server runs.
            let start = Instant::now();
            let mut later = None;
            while out.success() && start.elapsed() < Duration::from_secs(5) {
                if is_mountpoint(&self.mnt) {
                    later = Some(start.elapsed());
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let servers = pids_with_arg(&self.mnt);
            let detail = match later {
                Some(t) => format!("exited 0 but the mount was live only {t:?} later"),
                None => format!("mounted: {}", is_mountpoint(&self.mnt)),
            };
            // Leave nothing behind before failing.
            self.servers = servers.clone();
            self.live = true;
            self.unmount_quietly();
            panic!(
                "{} -o {} {} failed: status {:?}, {detail}, server processes {servers:?}, stderr: {}",
                prog.display(),
                args[1].to_string_lossy(),
                self.mnt.display(),
                out.status,
                out.stderr.trim()
            );
        }
        self.watchdog = Some(Watchdog::start(
            self.mnt.clone(),
            servers.clone(),
            HANG_TIMEOUT,
        ));
        self.servers = servers;
    }

    /// Unmounts and waits for the FUSE server to exit; panics if either
    /// does not happen within [`PROCESS_TIMEOUT`] (after cleaning up).
    pub fn unmount(&mut self) {
        if let Err(e) = self.try_unmount() {
            panic!("{e}");
        }
    }

    fn unmount_quietly(&mut self) {
        if let Err(e) = self.try_unmount() {
            eprintln!("cleanup: {e}");
        }
    }

    /// Unmounts; returns what went wrong, having cleaned up regardless.
    pub fn try_unmount(&mut self) -> Result<(), String> {
        if !self.live {
            return Ok(());
        }
        self.live = false;
        self.watchdog = None;
        let mut problems = Vec::new();
        if is_mountpoint(&self.mnt) {
            let clean = match &self.backend {
                Backend::Kernel => umount2(&self.mnt, MntFlags::empty()).is_ok(),
                Backend::Program(_) => Command::new("fusermount3")
                    .arg("-u")
                    .arg(&self.mnt)
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success()),
            };
            if !clean && is_mountpoint(&self.mnt) {
                if let Err(e) = umount2(&self.mnt, MntFlags::MNT_DETACH) {
                    problems.push(format!("umount {}: {e}", self.mnt.display()));
                }
            }
        }
        for &pid in &self.servers {
            // A mount namespace made while the mount was live (a user
            // namespace test running beside this one, on a machine whose
            // `/` is a private mount) holds a copy of it, and the server
            // serves that copy until the namespace ends: wait for those.
            let mut gone = wait_process_gone(pid, PROCESS_TIMEOUT);
            for _ in 0..4 {
                if gone || copies_elsewhere(&self.mnt).is_empty() {
                    break;
                }
                gone = wait_process_gone(pid, PROCESS_TIMEOUT);
            }
            if !gone {
                let threads = thread_states(pid);
                let copies = copies_elsewhere(&self.mnt);
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                problems.push(format!(
                    "the FUSE server (pid {pid}) of {} did not exit within {:?} after unmount; killed it; copies of the mount in other namespaces held by {copies:?}; its threads were: {threads}",
                    self.mnt.display(),
                    PROCESS_TIMEOUT
                ));
            }
        }
        self.servers.clear();
        // A server that ended normally reported its transport: in a
        // `_uring` binary it must have been the ring.
        if self.uring.take().is_some() {
            let stats = self.transport_stats();
            if let Ok(text) = fs::read_to_string(&stats) {
                let last = text.lines().rev().find(|l| l.starts_with("transport"));
                if last.is_none_or(|l| l.split_whitespace().nth(1) != Some("io_uring")) {
                    problems.push(format!(
                        "{} was served by {:?}, not FUSE over io_uring (see {})",
                        self.mnt.display(),
                        last,
                        stats.display()
                    ));
                }
                let _ = fs::remove_file(&stats);
            }
        }
        if is_mountpoint(&self.mnt) {
            problems.push(format!("{} is still mounted", self.mnt.display()));
            // Never remove the directories through a live mount.
            if let Some(root) = self.root.take() {
                let _ = root.keep();
            }
            if let Some(home) = self.upper_home.take() {
                let _ = home.keep();
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Restarts the hang watchdog with another timeout (see [`HANG_TIMEOUT`]).
    pub fn set_hang_timeout(&mut self, timeout: Duration) {
        self.watchdog = None;
        if self.live && !self.servers.is_empty() {
            self.watchdog = Some(Watchdog::start(
                self.mnt.clone(),
                self.servers.clone(),
                timeout,
            ));
        }
    }

    /// Forgets the server processes (for tests that kill them themselves).
    pub fn forget_servers(&mut self) {
        self.servers.clear();
        self.watchdog = None;
    }

    /// Marks the mount live with these servers (for tests that ran the mount
    /// program themselves), so the guard unmounts it.
    pub fn adopt(&mut self, backend: Backend, servers: Vec<i32>) {
        self.watchdog = Some(Watchdog::start(
            self.mnt.clone(),
            servers.clone(),
            HANG_TIMEOUT,
        ));
        self.backend = backend;
        self.servers = servers;
        self.live = true;
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.unmount_quietly();
    }
}

/// Escapes `:` (and `\`) in a lowerdir element as fuse-overlayfs expects.
pub fn escape_colon(path: &str) -> String {
    path.replace('\\', "\\\\").replace(':', "\\:")
}

/// The processes of other mount namespaces that hold a copy of the FUSE
/// mount at `mnt` (made when their namespace was created).
pub fn copies_elsewhere(mnt: &Path) -> Vec<i32> {
    let ours = fs::read_link("/proc/self/ns/mnt").ok();
    let want = mnt.to_string_lossy().into_owned();
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| fs::read_link(format!("/proc/{pid}/ns/mnt")).ok() != ours)
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/mountinfo")).is_ok_and(|m| {
                m.lines().any(|l| {
                    let mut halves = l.split(" - ");
                    let (head, tail) = (halves.next().unwrap_or(""), halves.next().unwrap_or(""));
                    head.split(' ').nth(4) == Some(want.as_str()) && tail.starts_with("fuse")
                })
            })
        })
        .collect()
}

/// What each thread of `pid` was doing (name, state, wait channel, kernel
/// stack): the diagnosis of a server that does not exit.
fn thread_states(pid: i32) -> String {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return "gone".into();
    };
    let read = |p: std::path::PathBuf| fs::read_to_string(p).unwrap_or_default();
    tasks
        .flatten()
        .map(|t| {
            let p = t.path();
            let stat = read(p.join("stat"));
            let state = stat
                .rsplit(") ")
                .next()
                .and_then(|r| r.split(' ').next())
                .unwrap_or("?")
                .to_string();
            let stack: Vec<String> = read(p.join("stack"))
                .lines()
                .take(6)
                .map(|l| l.split_whitespace().last().unwrap_or("").to_string())
                .collect();
            format!(
                "[{} {} {} wchan={} stack={}]",
                t.file_name().to_string_lossy(),
                read(p.join("comm")).trim(),
                state,
                read(p.join("wchan")).trim(),
                stack.join("<")
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}
