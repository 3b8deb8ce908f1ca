//! Storage drivers: what mounts a layer stack for a workload, and the guard
//! that always unmounts it again.
//!
//! Invariant: every mount is owned by a [`MountGuard`] from the moment it
//! exists. Dropping the guard (also while unwinding from a panic or an
//! error) unmounts, waits for the FUSE server to exit (killing it if it does
//! not) and retires the run's scratch directory (see [`retire`]), so a run
//! never leaves a mount or a daemon behind.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::dataset::{remove_all, Stack};
use crate::error::{io_err, BenchError, Result};
use crate::process;
use crate::sys;

/// How long a FUSE server may take to exit after its unmount.
const SERVER_EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// The drivers a run compares unless told otherwise: strata over the
/// classic `/dev/fuse` loop and over io_uring, one column each.
pub const DEFAULT_DRIVERS: &str = "strata+uring=off,strata+uring=on,kernel,fuse-overlayfs,native";

/// Which driver a `--drivers` element names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriverKind {
    /// Strata's `strata-mount`, found next to `strata-bench` or via `--strata`.
    Strata,
    /// The kernel's overlayfs.
    Kernel,
    /// `fuse-overlayfs` from `$PATH`.
    FuseOverlayfs,
    /// A plain directory holding the merged view: the floor.
    Native,
    /// Any fuse-overlayfs-compatible mount program.
    Program(PathBuf),
}

/// A driver as named on the command line: its kind and extra mount options
/// (`strata+metacopy=on`, `prog:/opt/strata-mount+threads=4`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverSpec {
    pub kind: DriverKind,
    /// `@userns`: mounted, and the workload run, inside a user namespace
    /// and a mount namespace of their own, without any capability in the
    /// initial namespace (see [`crate::sys::in_userns`]): the rootless
    /// setting of rootless podman and buildah. The kernel's overlayfs gets
    /// `userxattr` there.
    pub userns: bool,
    /// Options appended to the `-o` string (or to the kernel's mount data).
    pub extra: Vec<String>,
}

impl DriverSpec {
    /// The kernel's overlayfs without extra options: what ratios divide by.
    pub fn kernel() -> Self {
        DriverSpec {
            kind: DriverKind::Kernel,
            userns: false,
            extra: Vec::new(),
        }
    }

    /// The standard drivers: strata on each FUSE transport, the kernel,
    /// fuse-overlayfs, and the plain directory.
    pub fn defaults() -> Vec<Self> {
        DEFAULT_DRIVERS
            .split(',')
            .map(|s| s.parse().expect("a known driver"))
            .collect()
    }

    /// Whether the driver asks for FUSE over io_uring (`+uring=on`), which
    /// needs the kernel's `enable_uring` switch for the run.
    pub fn wants_uring(&self) -> bool {
        self.extra.iter().any(|o| o == "uring=on")
    }

    /// Finds the driver's program. `strata` is the path of `strata-mount`
    /// to use for [`DriverKind::Strata`]. The error says why the driver
    /// cannot run here.
    pub fn resolve(&self, strata: &Path) -> Result<Box<dyn Driver>, String> {
        let name = self.to_string();
        let program = |p: PathBuf| -> Result<Box<dyn Driver>, String> {
            if process::find_program(&p.to_string_lossy()).is_none() {
                return Err(format!("{name}: {} is not installed", p.display()));
            }
            if process::find_program("fusermount3").is_none() {
                return Err(format!("{name}: fusermount3 is not installed"));
            }
            Ok(Box::new(ProgramDriver {
                name: name.clone(),
                program: p,
                extra: self.extra.clone(),
                userns: self.userns,
            }))
        };
        if self.wants_uring() && !Path::new(crate::sys::ENABLE_URING).exists() {
            return Err(format!(
                "{name}: this kernel has no FUSE over io_uring ({} is missing)",
                crate::sys::ENABLE_URING
            ));
        }
        match &self.kind {
            DriverKind::Strata => program(strata.to_path_buf()),
            DriverKind::FuseOverlayfs => match process::find_program("fuse-overlayfs") {
                Some(p) => program(p),
                None => Err(format!("{name}: fuse-overlayfs is not installed")),
            },
            DriverKind::Program(p) => program(p.clone()),
            DriverKind::Kernel => {
                let supported = fs::read_to_string("/proc/filesystems")
                    .is_ok_and(|s| s.lines().any(|l| l.ends_with("\toverlay")));
                if supported {
                    let mut extra = self.extra.clone();
                    if self.userns && !extra.iter().any(|o| o == "userxattr") {
                        // trusted.* needs CAP_SYS_ADMIN in the initial namespace.
                        extra.insert(0, "userxattr".to_string());
                    }
                    Ok(Box::new(KernelDriver {
                        name,
                        extra,
                        userns: self.userns,
                    }))
                } else {
                    Err(format!("{name}: this kernel has no overlayfs"))
                }
            }
            DriverKind::Native => Ok(Box::new(NativeDriver)),
        }
    }
}

/// The drivers of a `--drivers` list. Drivers and their options are both
/// comma-separated: a piece that does not name a driver continues the
/// options of the one before (`strata+a=1,b=2,kernel` is two drivers).
pub fn parse_list(s: &str) -> Result<Vec<DriverSpec>> {
    let starts_driver = |piece: &str| {
        let head = piece.split('+').next().unwrap_or("");
        let head = head.strip_suffix("@userns").unwrap_or(head);
        piece.starts_with("prog:")
            || matches!(
                head,
                "strata" | "kernel" | "overlay" | "overlayfs" | "fuse-overlayfs" | "native"
            )
    };
    let mut specs: Vec<String> = Vec::new();
    for piece in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match specs.last_mut() {
            Some(last) if !starts_driver(piece) && last.contains('+') => {
                last.push(',');
                last.push_str(piece);
            }
            _ => specs.push(piece.to_string()),
        }
    }
    specs.iter().map(|p| p.parse()).collect()
}

impl FromStr for DriverSpec {
    type Err = BenchError;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        let (head, extra) = if let Some(rest) = s.strip_prefix("prog:") {
            // The options start at the first '+' after the last '/'.
            let base = rest.rfind('/').map_or(0, |i| i + 1);
            match rest[base..].find('+') {
                Some(i) => (&s[..5 + base + i], Some(&rest[base + i + 1..])),
                None => (s, None),
            }
        } else {
            match s.split_once('+') {
                Some((h, o)) => (h, Some(o)),
                None => (s, None),
            }
        };
        let extra: Vec<String> = extra
            .map(|o| {
                o.split(',')
                    .filter(|x| !x.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let (head, userns) = match head.strip_suffix("@userns") {
            Some(h) => (h, true),
            None => (head, false),
        };
        let kind = match head {
            "strata" => DriverKind::Strata,
            "kernel" | "overlay" | "overlayfs" => DriverKind::Kernel,
            "fuse-overlayfs" => DriverKind::FuseOverlayfs,
            "native" => DriverKind::Native,
            p if p.starts_with("prog:") && p.len() > 5 => {
                DriverKind::Program(PathBuf::from(&p[5..]))
            }
            _ => return Err(BenchError::UnknownDriver(s.to_string())),
        };
        if kind == DriverKind::Native && (!extra.is_empty() || userns) {
            return Err(BenchError::UnknownDriver(s.to_string()));
        }
        Ok(DriverSpec {
            kind,
            userns,
            extra,
        })
    }
}

impl fmt::Display for DriverSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            DriverKind::Strata => f.write_str("strata")?,
            DriverKind::Kernel => f.write_str("kernel")?,
            DriverKind::FuseOverlayfs => f.write_str("fuse-overlayfs")?,
            DriverKind::Native => f.write_str("native")?,
            DriverKind::Program(p) => write!(f, "prog:{}", p.display())?,
        }
        if self.userns {
            f.write_str("@userns")?;
        }
        if !self.extra.is_empty() {
            write!(f, "+{}", self.extra.join(","))?;
        }
        Ok(())
    }
}

/// How the `native` driver provides a tree a workload may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NativeSetup {
    /// The merged copy itself (the workload reads, or writes what is there).
    Shared,
    /// A fresh tree of hard links to it (the workload only adds and removes
    /// names).
    Linked,
    /// A fresh full copy (the workload changes files' inodes).
    Copied,
}

/// What to mount, and where.
pub struct MountRequest<'a> {
    pub stack: &'a Stack,
    /// An empty directory of this run: mountpoint, upper, work, copies.
    pub scratch: &'a Path,
    pub native: NativeSetup,
}

/// A storage driver: mounts a stack of lower layers with a fresh upper
/// layer, and hands back the guard that unmounts it.
pub trait Driver {
    /// The name shown in results (`strata`, `kernel+metacopy=on`, ...).
    fn name(&self) -> &str;
    /// Whether a FUSE server process serves the mounts.
    fn is_fuse(&self) -> bool;
    /// Whether it mounts, and the workload runs, in a user namespace of
    /// their own (`@userns`): the runner then runs both in a child process
    /// there ([`crate::sys::in_userns`]).
    fn userns(&self) -> bool {
        false
    }
    /// Mounts `req.stack` and calls `probe` on the mounted root. Returns
    /// the guard and the time from the start of the mount itself (after
    /// the scratch directories exist) to the end of `probe`; the driver's
    /// own bookkeeping (finding the server's pid) is not counted.
    fn mount_probed(
        &self,
        req: &MountRequest,
        probe: &mut dyn FnMut(&Path) -> Result<()>,
    ) -> Result<(MountGuard, Duration)>;

    /// Mounts `req.stack`; when this returns, the mount answers requests.
    fn mount(&self, req: &MountRequest) -> Result<MountGuard> {
        self.mount_probed(req, &mut |_| Ok(())).map(|(g, _)| g)
    }
}

fn escape_lower(p: &Path) -> String {
    p.to_string_lossy()
        .replace('\\', "\\\\")
        .replace(':', "\\:")
}

fn make_dirs(scratch: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let (mnt, upper, work) = (
        scratch.join("mnt"),
        scratch.join("upper"),
        scratch.join("work"),
    );
    for d in [&mnt, &upper, &work] {
        fs::create_dir_all(d).map_err(io_err("mkdir", d))?;
    }
    Ok((mnt, upper, work))
}

/// The kernel's overlayfs, mounted with mount(2).
struct KernelDriver {
    name: String,
    extra: Vec<String>,
    userns: bool,
}

impl Driver for KernelDriver {
    fn name(&self) -> &str {
        &self.name
    }
    fn is_fuse(&self) -> bool {
        false
    }
    fn userns(&self) -> bool {
        self.userns
    }
    fn mount_probed(
        &self,
        req: &MountRequest,
        probe: &mut dyn FnMut(&Path) -> Result<()>,
    ) -> Result<(MountGuard, Duration)> {
        let (mnt, upper, work) = make_dirs(req.scratch)?;
        let mut data = format!(
            "lowerdir={},upperdir={},workdir={}",
            req.stack.relative_lowers_top_first().join(":"),
            upper.display(),
            work.display()
        );
        for o in &self.extra {
            data.push(',');
            data.push_str(o);
        }
        let t0 = Instant::now();
        sys::mount_overlay(&req.stack.layers_dir(), &data, &mnt).map_err(|reason| {
            BenchError::Mount {
                driver: self.name.clone(),
                mountpoint: mnt.clone(),
                reason,
            }
        })?;
        let guard = MountGuard {
            driver: self.name.clone(),
            root: mnt.clone(),
            mountpoint: Some(mnt),
            upper: Some(upper),
            scratch: req.scratch.to_path_buf(),
            teardown: Teardown::Kernel,
            live: true,
        };
        probe(guard.root())?;
        Ok((guard, t0.elapsed()))
    }
}

/// A fuse-overlayfs-compatible mount program that daemonizes once the
/// mount is live: strata-mount, fuse-overlayfs, or any other.
struct ProgramDriver {
    name: String,
    program: PathBuf,
    extra: Vec<String>,
    userns: bool,
}

impl Driver for ProgramDriver {
    fn name(&self) -> &str {
        &self.name
    }
    fn is_fuse(&self) -> bool {
        true
    }
    fn userns(&self) -> bool {
        self.userns
    }
    fn mount_probed(
        &self,
        req: &MountRequest,
        probe: &mut dyn FnMut(&Path) -> Result<()>,
    ) -> Result<(MountGuard, Duration)> {
        let (mnt, upper, work) = make_dirs(req.scratch)?;
        let lowers: Vec<String> = req
            .stack
            .lowers_top_first()
            .iter()
            .map(|p| escape_lower(p))
            .collect();
        let mut opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lowers.join(":"),
            escape_lower(&upper),
            escape_lower(&work)
        );
        for o in &self.extra {
            opts.push(',');
            opts.push_str(o);
        }
        // stderr goes to a file: a daemon holding a pipe of ours open would
        // keep a caller that waits for EOF waiting forever.
        let err_path = req.scratch.join("mount.stderr");
        let err_file = fs::File::create(&err_path).map_err(io_err("create", &err_path))?;
        let t0 = Instant::now();
        let status = Command::new(&self.program)
            .arg("-o")
            .arg(&opts)
            .arg(&mnt)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err_file)
            .status();
        let probed = match &status {
            Ok(s) if s.success() => Some(probe(&mnt)),
            _ => None,
        };
        let elapsed = t0.elapsed();
        // From here on the guard owns whatever got mounted or started.
        let mut guard = MountGuard {
            driver: self.name.clone(),
            root: mnt.clone(),
            mountpoint: Some(mnt.clone()),
            upper: Some(upper),
            scratch: req.scratch.to_path_buf(),
            teardown: Teardown::Fuse {
                servers: process::pids_with_path_arg(&mnt),
            },
            live: true,
        };
        let failure = match status {
            Err(e) => Some(format!("could not start {}: {e}", self.program.display())),
            Ok(s) if !s.success() => Some(format!("{} exited with {s}", self.program.display())),
            Ok(_) if !process::is_mountpoint(&mnt) => Some(format!(
                "{} exited 0 but nothing is mounted",
                self.program.display()
            )),
            Ok(_) => match probed {
                Some(Err(e)) => Some(e.to_string()),
                _ => None,
            },
        };
        if let Some(mut reason) = failure {
            let _ = guard.unmount_inner();
            let stderr = fs::read_to_string(&err_path).unwrap_or_default();
            if !stderr.trim().is_empty() {
                reason = format!("{reason}: {}", stderr.trim());
            }
            return Err(BenchError::Mount {
                driver: self.name.clone(),
                mountpoint: mnt,
                reason,
            });
        }
        Ok((guard, elapsed))
    }
}

/// A plain directory: no mount at all.
struct NativeDriver;

impl Driver for NativeDriver {
    fn name(&self) -> &str {
        "native"
    }
    fn is_fuse(&self) -> bool {
        false
    }
    fn mount_probed(
        &self,
        req: &MountRequest,
        probe: &mut dyn FnMut(&Path) -> Result<()>,
    ) -> Result<(MountGuard, Duration)> {
        let t0 = Instant::now();
        let pristine = req.stack.native();
        let root = match req.native {
            NativeSetup::Shared => pristine,
            NativeSetup::Linked | NativeSetup::Copied => {
                let tree = req.scratch.join("tree");
                let flag = if req.native == NativeSetup::Linked {
                    "-al"
                } else {
                    "-a"
                };
                process::run(Command::new("cp").arg(flag).arg(&pristine).arg(&tree))?;
                tree
            }
        };
        let guard = MountGuard {
            driver: "native".into(),
            root,
            mountpoint: None,
            upper: None,
            scratch: req.scratch.to_path_buf(),
            teardown: Teardown::Native,
            live: true,
        };
        probe(guard.root())?;
        Ok((guard, t0.elapsed()))
    }
}

/// Name of the directory, beside each scratch directory, that retired
/// scratch directories are moved into.
pub const TRASH: &str = "trash";

/// Takes a finished run's scratch directory out of the way: files of 1 MiB
/// or more are deleted now (they hold the disk space), the rest is renamed
/// into [`TRASH`] beside it and deleted when the whole run ends.
///
/// Deleting thousands of inodes right away would slow down the next
/// workload that creates files: ext4 without a journal (this machine's
/// root filesystem) skips inodes deleted in the last 30 seconds when it
/// allocates new ones, scanning inode tables in `recently_deleted()`, which
/// made create_storm 7 times slower on whichever driver came next.
pub fn retire(scratch: &Path) -> Result<()> {
    delete_big_files(scratch)?;
    let Some(parent) = scratch.parent() else {
        return remove_all(scratch);
    };
    let trash = parent.join(TRASH);
    fs::create_dir_all(&trash).map_err(io_err("mkdir", &trash))?;
    let name = scratch.file_name().unwrap_or_default();
    let to = trash.join(name);
    remove_all(&to)?;
    fs::rename(scratch, &to).map_err(io_err("move to trash", scratch))
}

fn delete_big_files(dir: &Path) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("read directory", dir)(e)),
    };
    for e in entries {
        let e = e.map_err(io_err("read directory", dir))?;
        let p = e.path();
        let m = fs::symlink_metadata(&p).map_err(io_err("stat", &p))?;
        if m.is_dir() {
            delete_big_files(&p)?;
        } else if m.is_file() && m.len() >= 1 << 20 {
            fs::remove_file(&p).map_err(io_err("remove", &p))?;
        }
    }
    Ok(())
}

/// How a mount is taken down.
#[derive(Debug)]
enum Teardown {
    Kernel,
    Fuse { servers: Vec<i32> },
    Native,
}

/// A live mount (or native tree) of one run. Dropping it unmounts, reaps
/// the FUSE server and retires the run's scratch directory.
#[derive(Debug)]
pub struct MountGuard {
    driver: String,
    root: PathBuf,
    mountpoint: Option<PathBuf>,
    upper: Option<PathBuf>,
    scratch: PathBuf,
    teardown: Teardown,
    live: bool,
}

impl MountGuard {
    /// Where the workload sees the merged tree.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The upper layer, for drivers that have one.
    pub fn upper(&self) -> Option<&Path> {
        self.upper.as_deref()
    }

    /// The FUSE server processes (found by mountpoint in /proc/*/cmdline).
    pub fn servers(&self) -> &[i32] {
        match &self.teardown {
            Teardown::Fuse { servers } => servers,
            _ => &[],
        }
    }

    /// The largest peak RSS (`VmHWM`) of the FUSE servers, in KiB.
    pub fn server_peak_rss_kib(&self) -> Option<u64> {
        self.servers()
            .iter()
            .filter_map(|&p| process::peak_rss_kib(p))
            .max()
    }

    /// Unmounts, waits for the server to exit and retires the scratch
    /// directory; says what went wrong (after cleaning up regardless).
    pub fn unmount(mut self) -> Result<()> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> Result<()> {
        if !self.live {
            return Ok(());
        }
        self.live = false;
        let mut problems = Vec::new();
        if let Some(mnt) = &self.mountpoint {
            if process::is_mountpoint(mnt) {
                let clean = match self.teardown {
                    Teardown::Kernel => sys::umount(mnt, false).is_ok(),
                    Teardown::Fuse { .. } => Command::new("fusermount3")
                        .arg("-u")
                        .arg(mnt)
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .is_ok_and(|s| s.success()),
                    Teardown::Native => true,
                };
                if !clean {
                    problems.push("the unmount failed; detached it lazily".to_string());
                    if process::is_mountpoint(mnt) {
                        if let Err(e) = sys::umount(mnt, true) {
                            problems.push(format!("umount -l: {e}"));
                        }
                    }
                }
            }
        }
        for &pid in self.servers() {
            if !process::wait_gone(pid, SERVER_EXIT_TIMEOUT) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                problems.push(format!(
                    "the FUSE server (pid {pid}) did not exit within {SERVER_EXIT_TIMEOUT:?}; killed it"
                ));
            }
        }
        let still = process::mounts_under(&self.scratch);
        if still.is_empty() {
            if let Err(e) = retire(&self.scratch) {
                problems.push(e.to_string());
            }
        } else {
            // Never delete through a live mount.
            problems.push(format!("still mounted: {}", still.join(", ")));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(BenchError::Unmount {
                driver: self.driver.clone(),
                mountpoint: self.mountpoint.clone().unwrap_or_else(|| self.root.clone()),
                reason: problems.join("; "),
            })
        }
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_inner() {
            eprintln!("strata-bench: cleanup: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_list_keeps_each_drivers_comma_separated_options() {
        let v =
            super::parse_list("strata+uring=off,threads=4,kernel,fuse-overlayfs@userns").unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].extra, ["uring=off", "threads=4"]);
        assert_eq!(v[1], super::DriverSpec::kernel());
        assert!(v[2].userns);
        // A piece that is not a driver and follows no options is refused.
        assert!(super::parse_list("kernel,threads=4").is_err());
    }

    use super::*;

    #[test]
    fn parses_driver_names_and_options() {
        let d: DriverSpec = "strata+metacopy=on,threads=4".parse().unwrap();
        assert_eq!(d.kind, DriverKind::Strata);
        assert_eq!(d.extra, ["metacopy=on", "threads=4"]);
        assert_eq!(d.to_string(), "strata+metacopy=on,threads=4");

        let d: DriverSpec = "prog:/opt/a+b/strata-mount+timeout=5".parse().unwrap();
        assert_eq!(
            d.kind,
            DriverKind::Program(PathBuf::from("/opt/a+b/strata-mount"))
        );
        assert_eq!(d.extra, ["timeout=5"]);

        let d: DriverSpec = "prog:/usr/bin/fuse-overlayfs".parse().unwrap();
        assert!(d.extra.is_empty());
        assert_eq!(d.to_string(), "prog:/usr/bin/fuse-overlayfs");

        assert_eq!(
            "kernel".parse::<DriverSpec>().unwrap(),
            DriverSpec::kernel()
        );
        let d: DriverSpec = "strata@userns+uring=off".parse().unwrap();
        assert_eq!((d.kind.clone(), d.userns), (DriverKind::Strata, true));
        assert_eq!(d.extra, ["uring=off"]);
        assert_eq!(d.to_string(), "strata@userns+uring=off");
        let d: DriverSpec = "prog:/opt/x@y/fuse-overlayfs@userns".parse().unwrap();
        assert_eq!(
            (d.kind.clone(), d.userns),
            (
                DriverKind::Program(PathBuf::from("/opt/x@y/fuse-overlayfs")),
                true
            )
        );
        assert_eq!(d.to_string(), "prog:/opt/x@y/fuse-overlayfs@userns");
        assert!("kernel@userns".parse::<DriverSpec>().unwrap().userns);
        assert!(!"kernel".parse::<DriverSpec>().unwrap().userns);
        assert!("native@userns".parse::<DriverSpec>().is_err());
        assert!("zfs".parse::<DriverSpec>().is_err());
        assert!("native+x".parse::<DriverSpec>().is_err());
        assert!("prog:".parse::<DriverSpec>().is_err());
    }
}
