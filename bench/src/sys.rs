//! The system calls the benchmark makes: kernel overlay mounts, unmounts,
//! whiteout devices, dropping the page cache, and the Ctrl-C flag. The only
//! `unsafe` code of the crate lives here.

#![allow(unsafe_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, pipe, setresgid, setresuid, ForkResult, Gid, Uid};

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

/// The uid and gid mapping of the user namespaces that the `@userns`
/// drivers mount in (`/proc/PID/uid_map` format): ids 0–65535 inside are
/// the same ids outside, as `unshare -Ur` run by root maps 0 to 0, widened
/// so that files of other owners (a tarball's) keep theirs. The processes
/// inside have every capability in the namespace and none in the initial
/// one: no `trusted.*` xattrs, no FUSE passthrough, no mounts outside.
pub const USERNS_MAP: &str = "0 0 65536\n";

/// Runs `f` in a child process in a new user namespace (ids mapped by
/// [`USERNS_MAP`], the child uid and gid 0 in it) and a new mount
/// namespace whose mounts are all private: what the child mounts exists
/// only for it and the processes it starts. Returns what `f` returned, or
/// why the child could not run it. The child leaves with `_exit`, never
/// through the caller's frames, so no guard of the caller runs twice;
/// `f` must clean up whatever it mounts before it returns.
pub fn in_userns(f: impl FnOnce() -> Result<String, String>) -> Result<String, String> {
    let (from_child, to_parent) = pipe().map_err(|e| format!("pipe: {e}"))?;
    let (from_parent, to_child) = pipe().map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: the benchmark is single-threaded (see `mount_overlay`), so
    // the child may allocate and run any code; it ends in `_exit`.
    match unsafe { fork() } {
        Err(e) => Err(format!("fork: {e}")),
        Ok(ForkResult::Child) => {
            drop((from_child, to_child));
            let mut out = File::from(to_parent);
            let mut inp = File::from(from_parent);
            let entered = (|| -> Result<(), String> {
                unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS)
                    .map_err(|e| format!("unshare(CLONE_NEWUSER|CLONE_NEWNS): {e}"))?;
                // `u`: the parent writes the id maps, then one byte.
                out.write_all(b"u").map_err(|e| e.to_string())?;
                let mut go = [0u8; 1];
                inp.read_exact(&mut go)
                    .map_err(|_| "the parent could not map the namespace's ids".to_string())?;
                let root_g = Gid::from_raw(0);
                setresgid(root_g, root_g, root_g).map_err(|e| format!("setresgid 0: {e}"))?;
                let root_u = Uid::from_raw(0);
                setresuid(root_u, root_u, root_u).map_err(|e| format!("setresuid 0: {e}"))?;
                mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                )
                .map_err(|e| format!("mount --make-rprivate /: {e}"))
            })();
            let reply = match entered {
                Err(e) => format!("1{e}"),
                Ok(()) => match catch_unwind(AssertUnwindSafe(f)) {
                    Ok(Ok(s)) => format!("0{s}"),
                    Ok(Err(e)) => format!("1{e}"),
                    Err(_) => "1the process in the user namespace panicked".to_string(),
                },
            };
            let _ = out.write_all(reply.as_bytes());
            drop(out);
            // SAFETY: `_exit` ends the child without running the parent's
            // destructors or atexit handlers (nothing of it is left to use).
            unsafe { libc::_exit(0) }
        }
        Ok(ForkResult::Parent { child }) => {
            drop((to_parent, from_parent));
            let mut inp = File::from(from_child);
            let mut out = File::from(to_child);
            let mut first = [0u8; 1];
            let mut reply = String::new();
            let mut problem = None;
            match inp.read(&mut first) {
                Ok(1) if first[0] == b'u' => {
                    let mapped = ["uid_map", "gid_map"].iter().try_for_each(|m| {
                        let p = format!("/proc/{child}/{m}");
                        std::fs::write(&p, USERNS_MAP).map_err(|e| format!("write {p}: {e}"))
                    });
                    match mapped {
                        Ok(()) => {
                            let _ = out.write_all(b"g");
                        }
                        Err(e) => problem = Some(e),
                    }
                    drop(out);
                }
                Ok(1) => reply.push(first[0] as char),
                _ => drop(out),
            }
            let read = inp.read_to_string(&mut reply);
            let status = loop {
                match waitpid(child, None) {
                    Err(Errno::EINTR) => continue,
                    other => break other,
                }
            };
            if let Some(p) = problem {
                return Err(p);
            }
            read.map_err(|e| format!("reading the child's reply: {e}"))?;
            match (reply.as_bytes().first(), status) {
                (Some(b'0'), _) => Ok(reply[1..].to_string()),
                (Some(b'1'), _) => Err(reply[1..].to_string()),
                (_, Ok(WaitStatus::Signaled(_, sig, _))) => Err(format!(
                    "the process in the user namespace was killed by {sig}"
                )),
                (_, st) => Err(format!(
                    "the process in the user namespace ended without a reply ({st:?})"
                )),
            }
        }
    }
}
