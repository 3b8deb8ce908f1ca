//! The supervisor: one process per running container. It mounts the
//! container's union (strata-fs) and serves it on threads, writes the
//! container's OCI spec and has youki's libcontainer start it
//! (`crate::launch`), waits for its init, records how it ended, deletes it
//! (its cgroups), unmounts, and exits with the container's exit code.
//!
//! It is the `strata` binary re-executed (`strata __supervise ID`), in a
//! session of its own, so it outlives the command that started it
//! (`run -d`). Readiness and start failures reach that command through the
//! supervisor's stdout: one line, `ok` or `error CODE MESSAGE`.
//!
//! The init gets the parent-death signal SIGKILL (from the executor): a
//! killed supervisor takes its container with it, the next start or `rm`
//! deletes what libcontainer left (its state, the cgroups), and
//! [`crate::container::Container::state`] reports the container exited
//! (137), which is the truth.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use strata_layerdb::Store;

use crate::attach;
use crate::beneath::Root;
use crate::container::{Container, Registry, Status};
use crate::mounts::{self, ServedMount};
use crate::proc::{self, ProcId};
use crate::process::{self, StartFailure};
use crate::sys;
use crate::{launch, network, oci, users};

/// The layer stack of a container, top first: its init layer, then its
/// image's layers.
pub fn lower_dirs(store: &Store, c: &Container) -> Result<Vec<PathBuf>, strata_layerdb::Error> {
    let mut v = vec![c.paths.init()];
    v.extend(store.lower_dirs(&c.config.image_id)?);
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
    let found = (|| -> Result<(Store, Registry, Container), SuperviseError> {
        let store = Store::open(root)?;
        let reg = Registry::open(root)?;
        let c = reg.find(id)?;
        Ok((store, reg, c))
    })();
    let (store, reg, c) = match found {
        Ok(x) => x,
        Err(e) => {
            let f = StartFailure::runtime(e.to_string());
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

/// What keeps the supervisor from finding or removing its container.
#[derive(Debug, thiserror::Error)]
enum SuperviseError {
    /// The image store.
    #[error(transparent)]
    Store(#[from] strata_layerdb::Error),
    /// The container registry.
    #[error(transparent)]
    Container(#[from] crate::container::Error),
}

fn remove_after_exit(store: &Store, reg: &Registry, c: &Container) -> Result<(), SuperviseError> {
    proc::unmount_all_under(&c.paths.dir);
    reg.delete(c)?;
    store.remove_image_user(&c.config.image_id, c.id().as_str())?;
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
    // The pipe an exec failure comes back on, made first so that its
    // descriptor is low (libcontainer keeps 3..=it open in the init).
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| StartFailure::runtime(format!("pipe: {e}")))?;
    let open_log = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(c.paths.log())
            .map_err(|e| StartFailure::runtime(format!("open {}: {e}", c.paths.log().display())))
    };
    let dup = |fd: BorrowedFd<'_>| {
        nix::unistd::dup(fd).map_err(|e| StartFailure::runtime(format!("dup: {e}")))
    };
    let null =
        || sys::dev_null().map_err(|e| StartFailure::runtime(format!("open /dev/null: {e}")));
    // What the container's stdio is, and the threads that copy its output:
    // - attached with -t: the caller's terminal, as is;
    // - attached: pipes, copied to the caller's stdout/stderr and the log
    //   (so `logs` shows it); when the caller's side closes, the copy stops
    //   and the container sees a broken pipe, as if it wrote there directly;
    // - detached with -t: a terminal whose output goes to the log (its
    //   programs see a tty, as with `docker run -dt`);
    // - detached: the log.
    let mut copies: Vec<(OwnedFd, Option<std::fs::File>, std::fs::File)> = Vec::new();
    let mut console = None;
    let (stdio, ctty) = match mode {
        Mode::Attached if c.config.tty => {
            let tty = sys::is_tty(sys::borrow_std(0));
            if tty {
                console = std::fs::read_link("/proc/self/fd/0").ok();
            }
            let s = launch::Stdio {
                stdin: dup(sys::borrow_std(0))?,
                stdout: dup(sys::borrow_std(1))?,
                stderr: dup(sys::borrow_std(2))?,
            };
            (s, tty)
        }
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
            let stderr = ends.pop().expect("two pipes");
            let stdout = ends.pop().expect("two pipes");
            let stdin = dup(sys::borrow_std(0))?;
            (
                launch::Stdio {
                    stdin,
                    stdout,
                    stderr,
                },
                false,
            )
        }
        Mode::Detached if c.config.tty => {
            let pty = nix::pty::openpty(None, None)
                .map_err(|e| StartFailure::runtime(format!("cannot allocate a terminal: {e}")))?;
            sys::set_cloexec(&pty.master);
            sys::set_cloexec(&pty.slave);
            copies.push((pty.master, None, open_log()?));
            console = std::fs::read_link(format!("/proc/self/fd/{}", pty.slave.as_raw_fd())).ok();
            let s = launch::Stdio {
                stdin: dup(pty.slave.as_fd())?,
                stdout: dup(pty.slave.as_fd())?,
                stderr: pty.slave,
            };
            (s, true)
        }
        Mode::Detached => {
            let log = OwnedFd::from(open_log()?);
            let s = launch::Stdio {
                stdin: null()?,
                stdout: dup(log.as_fd())?,
                stderr: log,
            };
            (s, false)
        }
    };
    let opts = mounts::options(lowers, Some((c.paths.upper(), c.paths.work())));
    let mounted = strata_fs::Mounted::mount(opts, &merged).map_err(|e| {
        StartFailure::runtime(format!("cannot mount the container's root filesystem: {e}"))
    })?;
    let served = ServedMount::serve(mounted)
        .map_err(|e| StartFailure::runtime(format!("cannot serve the filesystem: {e}")))?;
    let fail_after_mount = |served: ServedMount, f: StartFailure| {
        served.unmount();
        proc::unmount_all_under(&c.paths.dir);
        f
    };
    let spec = match container_spec(c, console.as_deref()) {
        Ok(s) => s,
        Err(f) => return Err(fail_after_mount(served, f)),
    };
    if let Err(f) = launch::write_bundle(&c.paths, &spec) {
        return Err(fail_after_mount(served, f));
    }
    let pumps: Vec<_> = copies
        .into_iter()
        .map(|(src, user, log)| std::thread::spawn(move || copy_output(src, user, log)))
        .collect();
    let own_netns = c.config.network != crate::container::Network::Host;
    // pasta or slirp4netns, attached to the new namespace before the
    // program starts; stopped when the init has exited (or by the
    // parent-death signal with a killed supervisor).
    let mut net_helper = None;
    let started = launch::start(
        &c.paths,
        c.id().as_str(),
        stdio,
        &err_w,
        ctty,
        own_netns,
        &mut |pid| {
            net_helper = network::start(c, pid)?;
            Ok(())
        },
    );
    drop(err_w);
    let started = match started {
        Ok(s) => s,
        Err(f) => {
            drop(net_helper);
            for p in pumps {
                let _ = p.join();
            }
            return Err(fail_after_mount(served, f));
        }
    };
    let child = started.pid;
    let mut msg = Vec::new();
    let _ = std::fs::File::from(err_r).read_to_end(&mut msg);
    if !msg.is_empty() {
        attach::wait_exit(child);
        drop(net_helper);
        drop(started);
        for p in pumps {
            let _ = p.join();
        }
        return Err(fail_after_mount(served, StartFailure::decode(&msg)));
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
    drop(net_helper);
    // Ends what is left in the container (its PID namespace dies with its
    // init) and removes its cgroups.
    drop(started);
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

/// The OCI spec of `c`, its user and `/etc` files looked up in its merged
/// tree (mounted and served), beneath its root; a missing working directory
/// is made there, as docker does.
fn container_spec(
    c: &Container,
    console: Option<&Path>,
) -> Result<serde_json::Value, StartFailure> {
    let cfg = &c.config;
    let root = Root::open(&c.paths.merged())
        .map_err(|e| StartFailure::runtime(format!("open the container's root: {e}")))?;
    let text = |p: &str| {
        root.read(Path::new(p))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    let user = users::resolve(&cfg.user, &text("/etc/passwd"), &text("/etc/group"))
        .map_err(|e| StartFailure::runtime(e.to_string()))?;
    let mut env = cfg.env.clone();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", user.home));
    }
    root.mkdir_all(Path::new(&cfg.workdir), 0o755)
        .map_err(|e| {
            StartFailure::runtime(format!(
                "cannot create working directory {}: {e}",
                cfg.workdir
            ))
        })?;
    let is_file = |p: &str| {
        root.open_at(Path::new(p), nix::fcntl::OFlag::O_PATH, 0)
            .ok()
            .map(std::fs::File::from)
            .and_then(|f| f.metadata().ok())
            .is_some_and(|m| m.is_file())
    };
    let inputs = oci::ProcessInputs {
        user: &user,
        env,
        console,
        rootless: strata_fs::sys::in_user_namespace(),
        etc_files: [
            is_file("/etc/hostname"),
            is_file("/etc/hosts"),
            is_file("/etc/resolv.conf"),
        ],
    };
    oci::spec(c, &inputs).map_err(|e| StartFailure::runtime(format!("seccomp profile: {e}")))
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
