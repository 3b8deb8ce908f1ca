//! Attaching the user's terminal to a container process: the relay between
//! stdin/stdout and a pty master (raw mode, window size on SIGWINCH), and
//! signal forwarding when there is no terminal, until the child exits.
//!
//! Signals are blocked and read from a signalfd, so no handler runs
//! asynchronously; children started with `std::process::Command` get an
//! empty signal mask back, and forked children unblock them.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::termios;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::sys;

/// The signals the attach loop handles.
fn handled() -> SigSet {
    let mut s = SigSet::empty();
    for sig in [
        Signal::SIGCHLD,
        Signal::SIGWINCH,
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        s.add(sig);
    }
    s
}

/// Blocks the handled signals in this process (call before starting the
/// child, so no SIGCHLD is missed).
pub fn block_signals() {
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&handled()), None);
}

/// Unblocks every signal (in a forked child).
pub fn unblock_all_signals() {
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

/// The exit code of a wait status: the code, or 128+N after signal N.
pub fn exit_code(ws: WaitStatus) -> Option<i32> {
    match ws {
        WaitStatus::Exited(_, c) => Some(c),
        WaitStatus::Signaled(_, s, _) => Some(128 + s as i32),
        _ => None,
    }
}

/// Waits for `pid`, retrying on EINTR; returns its exit code.
pub fn wait_exit(pid: Pid) -> i32 {
    loop {
        match waitpid(pid, None) {
            Ok(ws) => {
                if let Some(c) = exit_code(ws) {
                    return c;
                }
            }
            Err(Errno::EINTR) => continue,
            Err(_) => return crate::process::EXIT_RUNTIME,
        }
    }
}

/// Restores the terminal mode on drop.
struct RawMode {
    saved: Option<termios::Termios>,
}

impl RawMode {
    fn enter() -> RawMode {
        let stdin = std::io::stdin();
        let Ok(t) = termios::tcgetattr(stdin.as_fd()) else {
            return RawMode { saved: None };
        };
        let mut raw = t.clone();
        termios::cfmakeraw(&mut raw);
        let _ = termios::tcsetattr(stdin.as_fd(), termios::SetArg::TCSANOW, &raw);
        RawMode { saved: Some(t) }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), termios::SetArg::TCSANOW, t);
        }
    }
}

/// A new pty whose size is that of our terminal, if we have one.
pub fn open_pty() -> Result<nix::pty::OpenptyResult, Errno> {
    let ws = sys::get_winsize(sys::borrow_std(0)).or_else(|| sys::get_winsize(sys::borrow_std(1)));
    let pty = nix::pty::openpty(None, None)?;
    sys::set_cloexec(&pty.master);
    sys::set_cloexec(&pty.slave);
    if let Some(ws) = ws {
        sys::set_winsize(pty.master.as_fd(), &ws);
    }
    Ok(pty)
}

/// How the attach loop is wired.
pub struct Attach {
    /// The pty master, when the process has a terminal.
    pub master: Option<OwnedFd>,
    /// Copy our stdin to the master.
    pub forward_stdin: bool,
}

/// Relays until `child` exits and returns its exit code. Without a
/// terminal, SIGINT/SIGTERM/SIGHUP/SIGQUIT are passed to whatever `target`
/// names at that moment (the container's init).
pub fn run(child: Pid, attach: Attach, target: &dyn Fn() -> Option<crate::proc::ProcId>) -> i32 {
    let Ok(sfd) = SignalFd::with_flags(&handled(), SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
    else {
        return wait_exit(child);
    };
    let _raw = match (&attach.master, sys::is_tty(std::io::stdin())) {
        (Some(_), true) if attach.forward_stdin => Some(RawMode::enter()),
        _ => None,
    };
    let mut stdin_open = attach.forward_stdin && attach.master.is_some();
    let mut master = attach.master;
    let mut exited: Option<i32> = None;
    let mut buf = vec![0u8; 32 * 1024];
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    loop {
        if let Some(code) = exited {
            if master.is_none() {
                return code;
            }
        }
        let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        let stdin_idx = if stdin_open {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
            Some(fds.len() - 1)
        } else {
            None
        };
        let master_idx = master.as_ref().map(|m| {
            fds.push(PollFd::new(m.as_fd(), PollFlags::POLLIN));
            fds.len() - 1
        });
        // After the child exits, drain what the master still holds.
        let timeout = if exited.is_some() {
            PollTimeout::ZERO
        } else {
            PollTimeout::NONE
        };
        match nix::poll::poll(&mut fds, timeout) {
            Ok(0) => {
                master = None;
                continue;
            }
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(_) => return wait_exit(child),
        }
        let ready = |i: usize| {
            fds[i].revents().is_some_and(|r| {
                r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
            })
        };
        let sig_ready = ready(0);
        let stdin_ready = stdin_idx.is_some_and(ready);
        let master_ready = master_idx.is_some_and(ready);
        drop(fds);
        if sig_ready {
            while let Ok(Some(si)) = sfd.read_signal() {
                match Signal::try_from(si.ssi_signo as i32) {
                    Ok(Signal::SIGCHLD) => {
                        if let Ok(ws) = waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                            if let Some(c) = exit_code(ws) {
                                exited = Some(c);
                            }
                        }
                    }
                    Ok(Signal::SIGWINCH) => {
                        if let (Some(m), Some(ws)) = (&master, sys::get_winsize(sys::borrow_std(0)))
                        {
                            sys::set_winsize(m.as_fd(), &ws);
                        }
                    }
                    Ok(sig) => {
                        if let Some(p) = target() {
                            let _ = p.signal(sig);
                        }
                    }
                    Err(_) => {}
                }
            }
        }
        if stdin_ready {
            match stdin.lock().read(&mut buf) {
                Ok(0) | Err(_) => {
                    stdin_open = false;
                    if let Some(m) = &master {
                        // End of input: the terminal's EOF character.
                        let _ = nix::unistd::write(m, &[4]);
                    }
                }
                Ok(n) => {
                    if let Some(m) = &master {
                        let _ = write_all_fd(m, &buf[..n]);
                    }
                }
            }
        }
        if master_ready {
            if let Some(m) = &master {
                match nix::unistd::read(m, &mut buf) {
                    Ok(0) | Err(Errno::EIO) => master = None,
                    Ok(n) => {
                        let _ = stdout.write_all(&buf[..n]);
                        let _ = stdout.flush();
                    }
                    Err(Errno::EINTR) | Err(Errno::EAGAIN) => {}
                    Err(_) => master = None,
                }
            }
        }
    }
}

fn write_all_fd(fd: &OwnedFd, mut b: &[u8]) -> Result<(), Errno> {
    while !b.is_empty() {
        match nix::unistd::write(fd, b) {
            Ok(n) => b = &b[n..],
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    let _ = fd.as_raw_fd();
    Ok(())
}
