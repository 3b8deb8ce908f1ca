//! The filesystem the upper and work directories live on, for the
//! upper-filesystem matrix (issue 20): ext4, xfs and btrfs on loop devices,
//! tmpfs, a kernel overlayfs (the nested case) and a FUSE mount (strata-mount
//! on strata-mount), each also from inside a user namespace.
//!
//! A test binary named `upper_KIND` (`upper_ext4`, `upper_overlay`, ...;
//! the differential suite under a second name, as `differential_uring`) or
//! any binary run with `STRATA_TEST_UPPER_FS=KIND` puts the upper and work
//! directories of every stack it mounts on one scratch filesystem of that
//! kind, mounted at first use and shared by the binary's cases; it is
//! unmounted (and its loop device detached, its image removed) when the
//! process exits, failed tests included ([`crate::sys::at_exit`]). Lowers
//! and mountpoints stay under /tmp.
//!
//! Where the kernel's overlayfs takes such an upper (ext4, xfs, btrfs,
//! tmpfs) it is the oracle on the same filesystem; where it cannot (an
//! overlayfs or FUSE upper) the oracle is the kernel's overlayfs with its
//! upper under /tmp: results, merged trees and the upper directories with
//! their forms normalized are compared. On a strata-mount upper, the inner
//! mount writes the kernel's xattr whiteouts and opaque xattrs, which the
//! outer escapes. Another FUSE overlay upper (fuse-overlayfs as
//! `$STRATA_MOUNT`) can hold no whiteout (it refuses `.wh.` names, 0/0
//! devices and overlay xattrs through its mount): there the fixtures' upper
//! starts without whiteouts and opaque markers, and a case whose script
//! needs one is skipped by name ([`adapt`], [`cannot_hold`],
//! [`first_refused_whiteout`]).
//!
//! Each differential case of such a binary then runs again inside a user
//! namespace (the test binary re-executed with `--exact NAME`, see
//! [`run_in_userns`]): root inside maps to root outside, without any
//! capability in the initial namespace, as `unshare -Urm` as root; the
//! kernel's overlayfs mounts there with `userxattr`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::mount::{is_mountpoint, strata_program, temp_root};

/// Set in the environment of a test re-executed inside a user namespace.
pub const IN_USERNS: &str = "STRATA_TEST_IN_USERNS";
/// The scratch directory handed to a re-executed test.
pub const SCRATCH_DIR: &str = "STRATA_TEST_SCRATCH_DIR";
/// The id map of the user namespace: root to root (no capability outside),
/// the rest to a subordinate range as for a rootless user.
pub const USERNS_MAP: &str = "0 0 1\n1 100001 65535\n";

/// A kind of filesystem for the upper directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tmpfs,
    Ext4,
    Xfs,
    Btrfs,
    /// A kernel overlayfs mount (its own upper under /tmp).
    Overlay,
    /// A strata-mount mount (its own upper under /tmp).
    Fuse,
}

impl Kind {
    /// Every kind, in the order of the docs' table.
    pub const ALL: [Kind; 6] = [
        Kind::Tmpfs,
        Kind::Ext4,
        Kind::Xfs,
        Kind::Btrfs,
        Kind::Overlay,
        Kind::Fuse,
    ];

    /// Its name in binary names and `STRATA_TEST_UPPER_FS`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Tmpfs => "tmpfs",
            Kind::Ext4 => "ext4",
            Kind::Xfs => "xfs",
            Kind::Btrfs => "btrfs",
            Kind::Overlay => "overlay",
            Kind::Fuse => "fuse",
        }
    }

    /// The kind named `name`.
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Whether the kernel's overlayfs accepts an upper on this filesystem.
    pub fn kernel_takes_upper(self) -> bool {
        !matches!(self, Kind::Overlay | Kind::Fuse)
    }

    /// The mkfs program of a loop-device filesystem.
    fn mkfs(self) -> Option<&'static str> {
        match self {
            Kind::Ext4 => Some("mkfs.ext4"),
            Kind::Xfs => Some("mkfs.xfs"),
            Kind::Btrfs => Some("mkfs.btrfs"),
            _ => None,
        }
    }
}

/// The kind this test binary puts its uppers on: `STRATA_TEST_UPPER_FS`, or
/// the binary's name `upper_KIND`; None for every other binary.
pub fn selected() -> Option<Kind> {
    static SELECTED: OnceLock<Option<Kind>> = OnceLock::new();
    *SELECTED.get_or_init(|| {
        if let Some(v) = std::env::var_os("STRATA_TEST_UPPER_FS") {
            let v = v.to_string_lossy();
            return Some(Kind::parse(&v).unwrap_or_else(|| {
                panic!(
                    "STRATA_TEST_UPPER_FS={v}: not one of tmpfs, ext4, xfs, btrfs, overlay, fuse"
                )
            }));
        }
        let exe = std::env::current_exe().ok()?;
        let name = exe.file_name()?.to_string_lossy().into_owned();
        // target/debug/deps/upper_ext4-0123abcd
        let stem = name.split('-').next()?;
        Kind::parse(stem.strip_prefix("upper_")?)
    })
}

/// Whether this process runs inside the user namespace of a re-executed
/// test (or any user namespace whose root is not the initial one's).
pub fn in_userns() -> bool {
    static IN: OnceLock<bool> = OnceLock::new();
    *IN.get_or_init(|| {
        std::fs::read_to_string("/proc/self/uid_map")
            .map(|m| m.split_whitespace().collect::<Vec<_>>() != ["0", "0", "4294967295"])
            .unwrap_or(false)
    })
}

const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// Whether `dir` is on an overlay that interprets 0/0 devices and overlay
/// xattrs itself (a kernel overlayfs or a FUSE filesystem).
pub fn is_overlay_fs(dir: &Path) -> bool {
    nix::sys::statfs::statfs(dir).is_ok_and(|s| {
        let t = s.filesystem_type().0;
        t == OVERLAYFS_SUPER_MAGIC || t == FUSE_SUPER_MAGIC
    })
}

/// Whether `dir` is on this binary's strata-mount upper filesystem, which
/// escapes a nested overlay's xattrs: fixtures written there take the
/// kernel's xattr whiteouts and opaque xattrs (`.wh.` names and 0/0 devices
/// are refused through it).
pub fn escapes_overlay_xattrs(dir: &Path) -> bool {
    selected() == Some(Kind::Fuse)
        && !fuse_upper_without_whiteouts()
        && nix::sys::statfs::statfs(dir).is_ok_and(|s| s.filesystem_type().0 == FUSE_SUPER_MAGIC)
}

/// Whether CI asked for every tool to be present (`CI=true`).
fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A mounted scratch filesystem; dropping it unmounts it, detaches its loop
/// device and removes its image and directories.
#[derive(Debug)]
pub struct Scratch {
    kind: Kind,
    /// Holds the image, the mountpoint and (overlay, FUSE) the layers.
    root: Option<tempfile::TempDir>,
    dir: PathBuf,
    loop_dev: Option<String>,
    server: Option<i32>,
    mounted: bool,
}

impl Scratch {
    /// Mounts a fresh filesystem of `kind`. Err says why it is unavailable
    /// here (no loop devices, mkfs missing): the caller prints it and
    /// returns, except under `CI=true`, where it panics.
    pub fn mount(kind: Kind) -> Result<Scratch, String> {
        let root = temp_root();
        let dir = root.path().join("fs");
        std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let mut s = Scratch {
            kind,
            dir: dir.clone(),
            root: Some(root),
            loop_dev: None,
            server: None,
            mounted: false,
        };
        let root = s.root.as_ref().expect("root").path().to_path_buf();
        match kind {
            Kind::Tmpfs => {
                run(Command::new("mount")
                    .args(["-t", "tmpfs", "-o", "size=512m", "tmpfs"])
                    .arg(&dir))?;
                s.mounted = true;
            }
            Kind::Ext4 | Kind::Xfs | Kind::Btrfs => {
                let mkfs = kind.mkfs().expect("a loop-device kind");
                if !have(mkfs) {
                    return Err(format!("{mkfs} is not installed (scripts/packages.txt)"));
                }
                if !have("losetup") {
                    return Err("losetup is not installed (util-linux)".into());
                }
                let image = root.join("image");
                let f = std::fs::File::create(&image)
                    .map_err(|e| format!("create {}: {e}", image.display()))?;
                // xfs needs 300 MiB at least; sparse, so only what is
                // written takes space.
                f.set_len(300 << 20)
                    .map_err(|e| format!("size {}: {e}", image.display()))?;
                drop(f);
                let dev = run(Command::new("losetup").args(["-f", "--show"]).arg(&image))
                    .map_err(|e| format!("no loop device: {e}"))?;
                s.loop_dev = Some(dev.clone());
                // Quiet, and over whatever the image held.
                let quiet: &[&str] = match kind {
                    Kind::Ext4 => &["-q", "-F"],
                    _ => &["-q", "-f"],
                };
                run(Command::new(mkfs).args(quiet).arg(&dev))?;
                run(Command::new("mount").arg(&dev).arg(&dir))?;
                s.mounted = true;
            }
            Kind::Overlay => {
                for d in ["l", "u", "w"] {
                    std::fs::create_dir(root.join(d)).map_err(|e| format!("mkdir {d}: {e}"))?;
                }
                let o = format!(
                    "lowerdir={},upperdir={},workdir={}",
                    root.join("l").display(),
                    root.join("u").display(),
                    root.join("w").display()
                );
                run(Command::new("mount")
                    .args(["-t", "overlay", "overlay", "-o", &o])
                    .arg(&dir))?;
                s.mounted = true;
            }
            Kind::Fuse => {
                for d in ["l", "u", "w"] {
                    std::fs::create_dir(root.join(d)).map_err(|e| format!("mkdir {d}: {e}"))?;
                }
                let o = format!(
                    "lowerdir={},upperdir={},workdir={},{}",
                    root.join("l").display(),
                    root.join("u").display(),
                    root.join("w").display(),
                    crate::transport::mount_option()
                );
                run(Command::new(strata_program()).args(["-o", &o]).arg(&dir))?;
                s.mounted = true;
                s.server = crate::mount::pids_with_arg(&dir).first().copied();
            }
        }
        if !is_mountpoint(&dir) {
            return Err(format!("{} did not show up as a mount", dir.display()));
        }
        // Users of the namespace's subordinate range (the fixtures' owners)
        // make their own directories under per-stack ones; the scratch
        // root is for everyone, as /tmp.
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o1777))
            .map_err(|e| format!("chmod {}: {e}", dir.display()))?;
        Ok(s)
    }

    /// The mounted filesystem's root.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Its kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    fn cleanup(&mut self) {
        if self.mounted {
            self.mounted = false;
            let ok = if self.kind == Kind::Fuse {
                Command::new("fusermount3")
                    .arg("-u")
                    .arg(&self.dir)
                    .status()
                    .is_ok_and(|s| s.success())
            } else {
                nix::mount::umount2(&self.dir, nix::mount::MntFlags::empty()).is_ok()
            };
            if !ok && is_mountpoint(&self.dir) {
                if let Err(e) = nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH) {
                    eprintln!("cleanup: umount {}: {e}", self.dir.display());
                }
            }
            if let Some(pid) = self.server.take() {
                if !crate::mount::wait_process_gone(pid, crate::mount::PROCESS_TIMEOUT) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        if let Some(dev) = self.loop_dev.take() {
            if let Err(e) = run(Command::new("losetup").arg("-d").arg(&dev)) {
                eprintln!("cleanup: {e}");
            }
        }
        if is_mountpoint(&self.dir) {
            // Never remove files through a live mount.
            if let Some(r) = self.root.take() {
                let _ = r.keep();
            }
        }
        self.root = None;
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Mounts a scratch filesystem of `kind`, or says why not: prints the
/// reason and returns None, or panics under `CI=true` (CI must run them).
pub fn scratch_or_skip(kind: Kind) -> Option<Scratch> {
    match Scratch::mount(kind) {
        Ok(s) => Some(s),
        Err(e) if !ci() => {
            eprintln!("skipped: no {} scratch filesystem here: {e}", kind.name());
            None
        }
        Err(e) => panic!("CI=true but no {} scratch filesystem: {e}", kind.name()),
    }
}

static SHARED: std::sync::Mutex<Option<Scratch>> = std::sync::Mutex::new(None);

extern "C" fn unmount_shared() {
    let s = SHARED.lock().unwrap_or_else(|e| e.into_inner()).take();
    drop(s);
}

/// The shared scratch filesystem of [`selected`]'s kind: mounted at first
/// use (in a re-executed test, the one its parent passed in
/// `STRATA_TEST_SCRATCH_DIR`). None for the usual /tmp; Err says why it
/// could not be mounted (under `CI=true` that panics instead).
fn shared() -> &'static Option<Result<PathBuf, String>> {
    static DIR: OnceLock<Option<Result<PathBuf, String>>> = OnceLock::new();
    DIR.get_or_init(|| {
        let kind = selected()?;
        if let Some(d) = std::env::var_os(SCRATCH_DIR) {
            return Some(Ok(PathBuf::from(d)));
        }
        let s = match Scratch::mount(kind) {
            Ok(s) => s,
            Err(e) if ci() => panic!(
                "CI=true but the {} scratch filesystem for the upper directories cannot be mounted: {e}",
                kind.name()
            ),
            Err(e) => return Some(Err(e)),
        };
        let dir = s.path().to_path_buf();
        *SHARED.lock().unwrap_or_else(|e| e.into_inner()) = Some(s);
        crate::sys::at_exit(unmount_shared);
        eprintln!("upper and work directories on {} at {}", kind.name(), dir.display());
        Some(Ok(dir))
    })
}

/// The directory where this binary's stacks put their upper and work
/// directories: None for the usual /tmp (or when it is unavailable, see
/// [`unavailable`]).
pub fn shared_dir() -> Option<PathBuf> {
    shared().as_ref()?.as_ref().ok().cloned()
}

/// Why this binary's scratch filesystem is unavailable here (no loop
/// devices, mkfs missing), if it is: its cases print that and return.
pub fn unavailable() -> Option<String> {
    let kind = selected()?;
    match shared() {
        Some(Err(e)) => Some(format!("no {} scratch filesystem here: {e}", kind.name())),
        _ => None,
    }
}

/// Where a stack's upper and work directories go for `backend`: a fresh
/// directory on the shared scratch filesystem, except for the kernel's
/// overlayfs when it cannot take such an upper (the oracle keeps its upper
/// under /tmp then). None: under the stack's own root.
pub fn upper_home(kernel: bool) -> Option<tempfile::TempDir> {
    let kind = selected()?;
    if kernel && !kind.kernel_takes_upper() {
        return None;
    }
    let dir = shared_dir()?;
    Some(
        tempfile::Builder::new()
            .prefix("st")
            .tempdir_in(&dir)
            .unwrap_or_else(|e| panic!("mkdir in {}: {e}", dir.display())),
    )
}

/// In an `upper_KIND` binary outside the user namespace: runs the current
/// test (this thread's name) again inside a new user and mount namespace,
/// with the same scratch filesystem, and panics with its output if it
/// fails. Returns false (doing nothing) elsewhere.
pub fn run_in_userns() -> bool {
    if selected().is_none() || in_userns() {
        return false;
    }
    let name = std::thread::current()
        .name()
        .expect("a test thread has the test's name")
        .to_string();
    let exe = std::env::current_exe().expect("the test binary");
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", &name, "--test-threads=1", "--nocapture"])
        .env(IN_USERNS, "1")
        .env_remove("RUST_TEST_THREADS");
    if let Some(d) = shared_dir() {
        cmd.env(SCRATCH_DIR, d);
    }
    let out =
        crate::sys::output_in_userns(cmd, USERNS_MAP).expect("run a test in a user namespace");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name} failed in a user namespace ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let notes: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("fixture:") || l.starts_with("skipped"))
        .collect();
    eprintln!(
        "{name}: passed in a user namespace too\n{}",
        notes.join("\n")
    );
    true
}

/// Where this run's uppers are, for failure messages: empty for the usual.
pub fn describe() -> String {
    match (selected(), in_userns()) {
        (None, false) => String::new(),
        (None, true) => " (in a user namespace)".into(),
        (Some(k), false) => format!(" (upper on {})", k.name()),
        (Some(k), true) => format!(" (upper on {}, in a user namespace)", k.name()),
    }
}

/// The stack a case uses with this binary's upper filesystem, if not
/// `layers` itself: on a FUSE overlay upper (strata-mount's, as
/// fuse-overlayfs's), which refuses `.wh.` names and 0/0 devices, the
/// upper starts without its whiteouts and opaque markers, on both sides.
pub fn adapt(layers: &crate::Layers) -> Option<crate::Layers> {
    fuse_upper_without_whiteouts().then(|| layers.without_upper_markers())
}

/// Whether this binary's uppers are on a FUSE overlay that can hold no
/// whiteout: one that is not strata-mount (`$STRATA_MOUNT`, fuse-overlayfs
/// say). strata-mount escapes a nested overlay's xattrs (`overlay.opaque`,
/// `overlay.whiteout`), so an upper on it holds opaque directories and the
/// kernel's xattr whiteouts.
fn fuse_upper_without_whiteouts() -> bool {
    selected() == Some(Kind::Fuse)
        && strata_program().file_name() != Some(std::ffi::OsStr::new("strata-mount"))
}

/// Why a case cannot run with this binary's upper filesystem, if it
/// cannot: on a FUSE overlay upper, a script that needs a whiteout or an
/// opaque directory in the upper (as the kernel's run on /tmp shows,
/// `kernel_upper`) has no form to write it in.
pub fn cannot_hold(kernel_upper: Option<&crate::Snapshot>) -> Option<&'static str> {
    if !fuse_upper_without_whiteouts() {
        return None;
    }
    let needs = kernel_upper.is_some_and(|u| {
        u.0.values().any(|e| {
            matches!(
                e.kind,
                crate::tree::Kind::Whiteout | crate::tree::Kind::Dir { opaque: Some(true) }
            )
        })
    });
    needs.then_some("the script needs a whiteout or an opaque directory in the upper, which a FUSE overlay upper cannot hold (no 0/0 devices, .wh. names refused)")
}

/// On a FUSE overlay upper: the first op the kernel's run did and the
/// program's run refused with EINVAL, the error a whiteout gets there
/// (strata-mount and fuse-overlayfs refuse to create `.wh.` names).
pub fn first_refused_whiteout(
    kernel: &[crate::OpResult],
    program: &[crate::OpResult],
) -> Option<usize> {
    if !fuse_upper_without_whiteouts() {
        return None;
    }
    kernel
        .iter()
        .zip(program)
        .position(|(k, p)| k.is_ok() && *p == Err(nix::errno::Errno::EINVAL))
}
