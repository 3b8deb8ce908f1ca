//! The supervisor: one process per running container. It mounts the
//! container's union (strata-fs) and serves it on threads, forks the
//! container's init into new namespaces, waits for it, records how it
//! ended, unmounts, and exits with the container's exit code.
//!
//! It is the `strata` binary re-executed (`strata __supervise ID`), in a
//! session of its own, so it outlives the command that started it
//! (`run -d`). Readiness and start failures reach that command through the
//! supervisor's stdout: one line, `ok` or `error CODE MESSAGE`.
//!
//! The init gets the parent-death signal SIGKILL: a killed supervisor takes
//! its container with it, and [`crate::container::Container::state`] then
//! reports the container exited (137), which is the truth.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use strata_layerdb::Store;

use crate::attach;
use crate::container::{Container, Network, Registry, Status};
use crate::mounts::{self, ServedMount};
use crate::proc::{self, ProcId};
use crate::process::{self, StartFailure};
use crate::rootfs::{self, RootfsPlan};
use crate::sys::{self, RealSyscall, Syscall};

/// The layer stack of a container, top first: its init layer, then its
/// image's layers.
pub fn lower_dirs(store: &Store, c: &Container) -> Result<Vec<PathBuf>, strata_layerdb::Error> {
    let mut v = vec![c.paths.init()];
    v.extend(store.lower_dirs(&c.config.image_id.to_string())?);
    Ok(v)
}

/// How the supervisor reports to the command that started it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Container output to `ctr.log`; readiness on stdout.
    Detached,
    /// Container stdio is the supervisor's; errors on stderr.
    Attached,
}

fn report_failure(mode: Mode, f: &StartFailure) {
    match mode {
        Mode::Detached => {
            let mut out = std::io::stdout();
            let _ = writeln!(out, "error {}", String::from_utf8_lossy(&f.encode()));
            let _ = out.flush();
        }
        Mode::Attached => eprintln!("Error: {}", f.message),
    }
}

/// Runs the supervisor for container `id` of the store at `root`; returns
/// the exit code for the process.
pub fn supervise(root: &Path, id: &str, mode: Mode) -> i32 {
    let _ = nix::unistd::setsid();
    attach::unblock_all_signals();
    sys::ignore_signals(&[Signal::SIGHUP, Signal::SIGINT, Signal::SIGPIPE]);
    let found = (|| -> Result<(Store, Registry, Container), String> {
        let store = Store::open(root).map_err(|e| e.to_string())?;
        let reg = Registry::open(root).map_err(|e| e.to_string())?;
        let c = reg.find(id).map_err(|e| e.to_string())?;
        Ok((store, reg, c))
    })();
    let (store, reg, c) = match found {
        Ok(x) => x,
        Err(e) => {
            let f = StartFailure::runtime(e);
            report_failure(mode, &f);
            return f.code;
        }
    };
    match run(&store, &c, mode) {
        Ok(code) => {
            if c.config.auto_remove {
                let _ = remove_after_exit(&store, &reg, &c);
            }
            code
        }
        Err(f) => {
            let _ = c.update_state(|s| {
                s.status = Status::Created;
                s.supervisor = None;
                s.init = None;
                s.exit_code = Some(f.code);
                s.error = Some(f.message.clone());
            });
            if c.config.auto_remove {
                let _ = remove_after_exit(&store, &reg, &c);
            }
            report_failure(mode, &f);
            f.code
        }
    }
}

fn remove_after_exit(store: &Store, reg: &Registry, c: &Container) -> Result<(), String> {
    proc::unmount_all_under(&c.paths.dir);
    reg.delete(c).map_err(|e| e.to_string())?;
    store
        .remove_image_user(&c.config.image_id, c.id().as_str())
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn run(store: &Store, c: &Container, mode: Mode) -> Result<i32, StartFailure> {
    let me = ProcId::me();
    let claimed = c
        .update_state(|s| {
            let busy = matches!(s.status, Status::Starting | Status::Running)
                && s.supervisor.as_ref().is_some_and(ProcId::is_alive);
            if busy {
                return false;
            }
            s.status = Status::Starting;
            s.supervisor = Some(me);
            s.init = None;
            s.exit_code = None;
            s.error = None;
            true
        })
        .map_err(|e| StartFailure::runtime(e.to_string()))?;
    if !claimed {
        return Err(StartFailure::runtime(format!(
            "container {} is already running",
            c.config.name
        )));
    }
    let lowers = lower_dirs(store, c).map_err(|e| {
        StartFailure::runtime(format!("image {} of the container: {e}", c.config.image))
    })?;
    let merged = c.paths.merged();
    proc::unmount_all_under(&c.paths.dir);
    let open_log = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(c.paths.log())
            .map_err(|e| StartFailure::runtime(format!("open {}: {e}", c.paths.log().display())))
    };
    // What the container's stdio is, and the threads that copy its output:
    // - attached with -t: the caller's terminal, as is;
    // - attached: pipes, copied to the caller's stdout/stderr and the log
    //   (so `logs` shows it); when the caller's side closes, the copy stops
    //   and the container sees a broken pipe, as if it wrote there directly;
    // - detached with -t: a terminal whose output goes to the log (its
    //   programs see a tty, as with `docker run -dt`);
    // - detached: the log.
    let mut copies: Vec<(OwnedFd, Option<std::fs::File>, std::fs::File)> = Vec::new();
    let stdio = match mode {
        Mode::Attached if c.config.tty => InitStdio::Inherit,
        Mode::Attached => {
            let mut ends = Vec::new();
            for fd in [1, 2] {
                let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                    .map_err(|e| StartFailure::runtime(format!("pipe: {e}")))?;
                let user = nix::unistd::dup(sys::borrow_std(fd))
                    .ok()
                    .map(std::fs::File::from);
                copies.push((r, user, open_log()?));
                ends.push(w);
            }
            let err = ends.pop().expect("two pipes");
            let out = ends.pop().expect("two pipes");
            InitStdio::Pipes(out, err)
        }
        Mode::Detached if c.config.tty => {
            let pty = nix::pty::openpty(None, None)
                .map_err(|e| StartFailure::runtime(format!("cannot allocate a terminal: {e}")))?;
            sys::set_cloexec(&pty.master);
            sys::set_cloexec(&pty.slave);
            copies.push((pty.master, None, open_log()?));
            InitStdio::Tty(pty.slave)
        }
        Mode::Detached => InitStdio::Log(OwnedFd::from(open_log()?)),
    };
    let opts = mounts::options(lowers, Some((c.paths.upper(), c.paths.work())));
    let mounted = strata_fs::Mounted::mount(opts, &merged).map_err(|e| {
        StartFailure::runtime(format!("cannot mount the container's root filesystem: {e}"))
    })?;
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| StartFailure::runtime(format!("pipe: {e}")))?;
    let err_w = std::cell::Cell::new(Some(err_w));
    let mut init_fn = || -> isize {
        match err_w.take() {
            Some(w) => container_init(c, &stdio, w),
            None => sys::exit_child(process::EXIT_RUNTIME),
        }
    };
    let child = match sys::clone_child(CloneFlags::CLONE_NEWPID, &mut init_fn) {
        Ok(pid) => pid,
        Err(e) => {
            let _ = strata_fs::unmount(&merged);
            return Err(StartFailure::runtime(format!(
                "cannot start the container's init: {e}"
            )));
        }
    };
    drop(err_w.take());
    drop(stdio);
    let pumps: Vec<_> = copies
        .into_iter()
        .map(|(src, user, log)| std::thread::spawn(move || copy_output(src, user, log)))
        .collect();
    let served = match ServedMount::serve(mounted) {
        Ok(s) => s,
        Err(e) => {
            let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
            attach::wait_exit(child);
            return Err(StartFailure::runtime(format!(
                "cannot serve the filesystem: {e}"
            )));
        }
    };
    let mut msg = Vec::new();
    let _ = std::fs::File::from(err_r).read_to_end(&mut msg);
    if !msg.is_empty() {
        attach::wait_exit(child);
        served.unmount();
        proc::unmount_all_under(&c.paths.dir);
        return Err(StartFailure::decode(&msg));
    }
    let init = ProcId::of(child.as_raw()).unwrap_or(ProcId {
        pid: child.as_raw(),
        start_time: 0,
    });
    let _ = c.update_state(|s| {
        s.status = Status::Running;
        s.init = Some(init);
        s.started_at = Some(crate::format::now_rfc3339());
    });
    if mode == Mode::Detached {
        let mut out = std::io::stdout();
        let _ = writeln!(out, "ok");
        let _ = out.flush();
    }
    // Let go of the caller's descriptors: a terminal's master sees EOF when
    // the container's last process exits, and `run -d`'s pipe closes.
    if let Ok(null) = sys::dev_null() {
        for fd in 0..3 {
            let _ = sys::dup_onto(null.as_fd(), fd);
        }
    }
    let code = attach::wait_exit(child);
    for p in pumps {
        let _ = p.join();
    }
    served.unmount();
    proc::unmount_all_under(&c.paths.dir);
    let _ = c.update_state(|s| {
        s.status = Status::Exited;
        s.exit_code = Some(code);
        s.finished_at = Some(crate::format::now_rfc3339());
        s.supervisor = None;
        s.init = None;
    });
    Ok(code)
}

/// The container's init, in the forked child: new namespaces, the root
/// filesystem, then exec. Never returns; a failure is written to `err`.
/// The standard descriptors a container's init gets.
enum InitStdio {
    /// The supervisor's own (attached: the user's terminal or pipes).
    Inherit,
    /// stdin from /dev/null, stdout and stderr to the log.
    Log(OwnedFd),
    /// All three on this terminal (the slave of a pty).
    Tty(OwnedFd),
    /// stdin inherited, stdout and stderr to these pipes.
    Pipes(OwnedFd, OwnedFd),
}

/// Copies a container's output to the caller (while it listens) and the
/// log, until every writer is gone.
fn copy_output(src: OwnedFd, mut user: Option<std::fs::File>, mut log: std::fs::File) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match nix::unistd::read(&src, &mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if let Some(u) = &mut user {
                    if u.write_all(&buf[..n]).is_err() {
                        // The caller's end is gone: so is ours.
                        return;
                    }
                }
                let _ = log.write_all(&buf[..n]);
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

fn container_init(c: &Container, stdio: &InitStdio, err: OwnedFd) -> ! {
    let failure = match init_steps(c, stdio) {
        Ok(never) => match never {},
        Err(f) => f,
    };
    let _ = nix::unistd::write(&err, &failure.encode());
    sys::exit_child(failure.code)
}

fn init_steps(c: &Container, stdio: &InitStdio) -> Result<std::convert::Infallible, StartFailure> {
    let fail =
        |what: &str, e: &dyn std::fmt::Display| StartFailure::runtime(format!("{what}: {e}"));
    sys::default_signals();
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| fail("set the parent-death signal", &e))?;
    let dup3 = |fds: [&OwnedFd; 3]| -> Result<(), StartFailure> {
        for (n, fd) in fds.into_iter().enumerate() {
            sys::dup_onto(fd.as_fd(), n as i32).map_err(|e| fail("dup", &e))?;
        }
        Ok(())
    };
    match stdio {
        InitStdio::Inherit => {}
        InitStdio::Log(log) => {
            let null = sys::dev_null().map_err(|e| fail("open /dev/null", &e))?;
            dup3([&null, log, log])?;
        }
        InitStdio::Tty(slave) => dup3([slave, slave, slave])?,
        InitStdio::Pipes(out, err) => {
            sys::dup_onto(out.as_fd(), 1).map_err(|e| fail("dup", &e))?;
            sys::dup_onto(err.as_fd(), 2).map_err(|e| fail("dup", &e))?;
        }
    }
    let cfg = &c.config;
    let mut plan = RootfsPlan::for_container(&c.paths, cfg);
    if cfg.tty && sys::is_tty(sys::borrow_std(0)) {
        nix::unistd::setsid().map_err(|e| fail("setsid", &e))?;
        sys::set_controlling_tty(sys::borrow_std(0))
            .map_err(|e| fail("set the controlling terminal", &e))?;
        plan.console = std::fs::read_link("/proc/self/fd/0").ok();
    }
    sys::set_umask(0);
    let mut flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC;
    if cfg.network == Network::None {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    let sys = RealSyscall;
    sys.unshare(flags)
        .map_err(|e| fail("unshare namespaces", &e))?;
    rootfs::setup_mounts(&sys, &plan).map_err(|e| fail("set up the root filesystem", &e))?;
    rootfs::pivot(&sys, &plan.root).map_err(|e| fail("set up the root filesystem", &e))?;
    sys.sethostname(&cfg.hostname)
        .map_err(|e| fail("sethostname", &e))?;
    if cfg.network == Network::None {
        sys.loopback_up().map_err(|e| fail("bring up lo", &e))?;
    }
    process::exec(&process::ProcessSpec {
        args: cfg.args.clone(),
        env: cfg.env.clone(),
        cwd: cfg.workdir.clone(),
        user: cfg.user.clone(),
    })
}

/// Runs the mount daemon: mounts the stack at `at`, says `ok` (or `error
/// CODE MESSAGE`) on stdout, and serves until the mount is unmounted.
pub fn serve_mount(opts: strata_fs::MountOptions, at: &Path) -> i32 {
    let _ = nix::unistd::setsid();
    attach::unblock_all_signals();
    sys::ignore_signals(&[Signal::SIGHUP, Signal::SIGINT, Signal::SIGPIPE]);
    let served = match ServedMount::mount(opts, at) {
        Ok(s) => s,
        Err(e) => {
            report_failure(
                Mode::Detached,
                &StartFailure::runtime(format!("cannot mount {}: {e}", at.display())),
            );
            return process::EXIT_RUNTIME;
        }
    };
    println!("ok");
    let _ = std::io::stdout().flush();
    if let Ok(null) = sys::dev_null() {
        for fd in 0..3 {
            let _ = sys::dup_onto(null.as_fd(), fd);
        }
    }
    served.wait();
    0
}
