//! The runtime's system calls that need `unsafe` (fork, ioctls on
//! terminals, signal dispositions), each with a `SAFETY:` line. A
//! container's namespaces, mounts and privileges are libcontainer's
//! (`crate::launch`).
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::unistd::Pid;

/// Brings up `lo` in the calling thread's network namespace (as docker's
/// `--network none` has it).
pub fn loopback_up() -> Result<(), Errno> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads into the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the flags member of the union was just filled in.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: SIOCSIFFLAGS reads the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// What [`fork`] returns in each process.
#[derive(Debug)]
pub enum Forked {
    /// In the parent: the child's pid.
    Parent(Pid),
    /// In the child.
    Child,
}

/// fork(2). Call it only while the process has one thread (or in a child
/// that will only exec or exit), so the child never meets a lock held by a
/// thread that did not survive the fork.
pub fn fork() -> Result<Forked, Errno> {
    // SAFETY: callers fork single-threaded processes, or children that
    // only make syscalls before exec/_exit (documented above).
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent(child)),
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
    }
}

/// _exit(2): leaves a forked child without running the parent's atexit
/// handlers or flushing its buffers.
pub fn exit_child(code: i32) -> ! {
    // SAFETY: _exit is always safe to call.
    unsafe { libc::_exit(code) }
}

/// Makes the terminal on `fd` the controlling terminal of the calling
/// session leader (TIOCSCTTY).
pub fn set_controlling_tty(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    // SAFETY: TIOCSCTTY takes an int argument, no memory.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Reads a terminal's window size (TIOCGWINSZ).
pub fn get_winsize(fd: BorrowedFd<'_>) -> Option<libc::winsize> {
    // SAFETY: winsize is plain data.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes into the winsize we own.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) } < 0 {
        return None;
    }
    Some(ws)
}

/// Sets a terminal's window size (TIOCSWINSZ).
pub fn set_winsize(fd: BorrowedFd<'_>, ws: &libc::winsize) {
    // SAFETY: TIOCSWINSZ reads the winsize we own.
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, ws) };
}

/// Sets the process umask.
pub fn set_umask(mask: u32) {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
}

/// Duplicates `fd` onto descriptor number `target` (0, 1 or 2).
pub fn dup_onto(fd: BorrowedFd<'_>, target: i32) -> Result<(), Errno> {
    match target {
        0 => nix::unistd::dup2_stdin(fd),
        1 => nix::unistd::dup2_stdout(fd),
        2 => nix::unistd::dup2_stderr(fd),
        _ => Err(Errno::EINVAL),
    }
}

/// Opens `/dev/null` read-write.
pub fn dev_null() -> std::io::Result<OwnedFd> {
    Ok(std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?
        .into())
}

/// Wraps a raw descriptor number inherited from the parent (0, 1, 2).
pub fn borrow_std(fd: i32) -> BorrowedFd<'static> {
    // SAFETY: 0, 1 and 2 stay open for the life of the process.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// Takes ownership of an inherited descriptor.
pub fn own_fd(fd: i32) -> OwnedFd {
    // SAFETY: the caller passes a descriptor it owns and nothing else uses.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Is `fd` a terminal?
pub fn is_tty(fd: impl AsFd) -> bool {
    nix::unistd::isatty(fd).unwrap_or(false)
}

/// Ignores these signals (the supervisor: terminal hang-ups and Ctrl-C are
/// not for it).
pub fn ignore_signals(sigs: &[nix::sys::signal::Signal]) {
    for s in sigs {
        // SAFETY: SIG_IGN installs no handler code.
        let _ = unsafe { nix::sys::signal::signal(*s, nix::sys::signal::SigHandler::SigIgn) };
    }
}

/// Restores the default action of every catchable signal (a container's
/// process must not inherit the supervisor's ignored signals).
pub fn default_signals() {
    for s in nix::sys::signal::Signal::iterator() {
        if matches!(
            s,
            nix::sys::signal::Signal::SIGKILL | nix::sys::signal::Signal::SIGSTOP
        ) {
            continue;
        }
        // SAFETY: SIG_DFL installs no handler code.
        let _ = unsafe { nix::sys::signal::signal(s, nix::sys::signal::SigHandler::SigDfl) };
    }
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
}

/// lgetxattr(2): `None` when the attribute is absent.
pub fn lgetxattr(p: &Path, name: &str) -> std::io::Result<Option<Vec<u8>>> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(p.as_os_str().as_bytes())?;
    let name = std::ffi::CString::new(name)?;
    let mut buf = vec![0u8; 256];
    // SAFETY: valid NUL-terminated strings and a buffer of the given size.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::ENOTSUP) => Ok(None),
            _ => Err(e),
        };
    }
    buf.truncate(n as usize);
    Ok(Some(buf))
}

/// Restores the default SIGPIPE action (Rust ignores it): `strata logs |
/// head` then ends quietly, as command-line tools do.
pub fn default_sigpipe() {
    // SAFETY: SIG_DFL installs no handler code.
    let _ = unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        )
    };
}

/// Sets close-on-exec on a descriptor (pty ends come without it), so it
/// never leaks into a container's program.
pub fn set_cloexec(fd: &OwnedFd) {
    let _ = nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
}

/// Marks every descriptor from 3 up close-on-exec, so a container's
/// program starts with only stdin, stdout and stderr, whatever the caller
/// of `strata` left open (docker does the same).
pub fn cloexec_from_3() {
    let fds: Vec<i32> = match std::fs::read_dir("/proc/self/fd") {
        Ok(d) => d
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(_) => return,
    };
    for fd in fds.into_iter().filter(|fd| *fd > 2) {
        // SAFETY: setting a flag on a descriptor number; a stale number
        // (the directory iterator's own) gives EBADF, which is harmless.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

/// Spawns `cmd` tied to the calling thread: the child gets the
/// parent-death signal SIGKILL (so a killed supervisor takes its network
/// helper along) and keeps the descriptors `keep` open across exec.
pub fn spawn_tied(
    cmd: &mut std::process::Command,
    keep: &[i32],
) -> std::io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let keep = keep.to_vec();
    let parent = nix::unistd::getpid().as_raw();
    // SAFETY: the closure runs in the forked child before exec and makes
    // only async-signal-safe system calls (prctl, getppid, fcntl); it
    // allocates nothing (`keep` was copied before the fork).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died before the signal was armed.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            for fd in &keep {
                if libc::fcntl(*fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        })
    };
    cmd.spawn()
}

/// Points stdin, stdout and stderr at `/dev/null` and closes every other
/// descriptor: a daemon that must not hold its caller's pipes open.
pub fn detach_stdio_and_close_all() {
    if let Ok(null) = dev_null() {
        for fd in 0..3 {
            let _ = dup_onto(null.as_fd(), fd);
        }
    }
    // SAFETY: close_range(2) closes descriptors 3 and up; nothing in this
    // process uses them after the call (callers are forked daemons that
    // hold no `OwnedFd` they will use or drop afterwards).
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
}
