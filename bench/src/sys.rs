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
