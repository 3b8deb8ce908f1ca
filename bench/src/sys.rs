//! The system calls the benchmark makes: kernel overlay mounts, unmounts,
//! whiteout devices, dropping the page cache, and the Ctrl-C flag. The only
//! `unsafe` code of the crate lives here.

#![allow(unsafe_code)]

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use crate::error::{io_err, Result};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Makes SIGINT and SIGTERM set a flag (see [`interrupted`]) instead of
/// killing the process, so that the run loop can stop at the next step and
/// every mount guard unmounts.
pub fn catch_interrupts() {
    let act = SigAction::new(
        SigHandler::Handler(on_sigint),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        let _ = unsafe { sigaction(sig, &act) };
    }
}

/// Whether SIGINT or SIGTERM arrived since [`catch_interrupts`].
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// The fuse module's switch for FUSE over io_uring (Linux 6.14+).
pub const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// Keeps FUSE over io_uring enabled (`enable_uring` = Y) for a run whose
/// drivers ask for it, and puts back the value it found when dropped.
#[derive(Debug)]
pub struct UringSwitch(String);

impl UringSwitch {
    /// Sets the switch.
    pub fn on() -> Result<UringSwitch> {
        let old = std::fs::read_to_string(ENABLE_URING).map_err(io_err("read", ENABLE_URING))?;
        std::fs::write(ENABLE_URING, b"Y").map_err(io_err("write", ENABLE_URING))?;
        Ok(UringSwitch(old.trim().to_string()))
    }
}

impl Drop for UringSwitch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(ENABLE_URING, &self.0) {
            eprintln!(
                "strata-bench: cannot put {ENABLE_URING} back to {}: {e}",
                self.0
            );
        }
    }
}

/// Whether the process runs with euid 0.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Flushes every dirty page of every filesystem (`sync(2)`).
pub fn sync() {
    nix::unistd::sync();
}

/// `sync`, then drops the page cache, dentries and inodes
/// (`echo 3 > /proc/sys/vm/drop_caches`), so that the next read comes from
/// the disk.
pub fn drop_caches() -> Result<()> {
    sync();
    let p = "/proc/sys/vm/drop_caches";
    std::fs::write(p, b"3\n").map_err(io_err("write", p))
}

/// Mounts kernel overlayfs at `target` with the option string `data`, whose
/// `lowerdir=` may name directories relative to `cwd`: the process changes
/// into `cwd` for the call (keeping 127 lower layers under the kernel's
/// one-page limit for mount data) and back. The benchmark is
/// single-threaded, so nothing else sees the changed directory.
pub fn mount_overlay(cwd: &Path, data: &str, target: &Path) -> Result<(), String> {
    let back = std::env::current_dir().map_err(|e| format!("getcwd: {e}"))?;
    std::env::set_current_dir(cwd).map_err(|e| format!("chdir {}: {e}", cwd.display()))?;
    let r = mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(data),
    );
    let _ = std::env::set_current_dir(back);
    r.map_err(|e| format!("mount -t overlay -o {data}: {e}"))
}

/// `umount2(target, flags)`; `detach` asks for a lazy unmount.
pub fn umount(target: &Path, detach: bool) -> Result<(), Errno> {
    let flags = if detach {
        MntFlags::MNT_DETACH
    } else {
        MntFlags::empty()
    };
    umount2(target, flags)
}

/// Creates an overlay whiteout (character device 0/0) at `path`.
pub fn mknod_whiteout(path: &Path) -> Result<()> {
    mknod(
        path,
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o000),
        makedev(0, 0),
    )
    .map_err(|e| io_err("mknod whiteout", path)(e.into()))
}
