//! Starting containers and `exec` processes with youki's `libcontainer`:
//! it makes the namespaces, mounts the spec's filesystems under the root,
//! `pivot_root`s, applies the cgroup limits, drops capabilities, loads the
//! seccomp filter, switches to the user and calls our [`StrataExecutor`],
//! which finds the program and execs it (exit 127 when it is not found,
//! 126 when it cannot be run, as docker).
//!
//! libcontainer keeps its own state under `ROOT/containers/ID/oci/`; the
//! spec is `ROOT/containers/ID/bundle/config.json`.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container as OciContainer;
use libcontainer::oci_spec::runtime::Spec;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use nix::unistd::Pid;

/// libcontainer's pid (its own nix version) as ours.
fn our_pid<P>(p: P) -> Pid
where
    libc::pid_t: From<P>,
{
    Pid::from_raw(libc::pid_t::from(p))
}

use crate::container::Paths;
use crate::process::{self, StartFailure};
use crate::sys;

/// libcontainer's state directory of a container.
pub fn oci_root(paths: &Paths) -> PathBuf {
    paths.dir.join("oci")
}

/// The bundle directory of a container (holds `config.json`).
pub fn bundle(paths: &Paths) -> PathBuf {
    paths.dir.join("bundle")
}

/// The last step in the container: find the program, exec it. Runs after
/// libcontainer has set up everything else.
#[derive(Clone)]
pub struct StrataExecutor {
    /// Where a failure to exec is written (`CODE message`), else stderr.
    pub err_fd: Option<RawFd>,
    /// Make stdin (a terminal) the controlling terminal of the process's
    /// session (libcontainer already called `setsid`).
    pub ctty: bool,
    /// SIGKILL the process when its parent (the supervisor) dies: a killed
    /// supervisor takes its container with it.
    pub pdeathsig: bool,
}

impl Executor for StrataExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        let proc_ = spec.process().as_ref().ok_or(ExecutorError::InvalidArg)?;
        let args = proc_.args().clone().unwrap_or_default();
        let mut env = proc_.env().clone().unwrap_or_default();
        if !env.iter().any(|e| e.starts_with("HOME=")) {
            if let Ok(h) = std::env::var("HOME") {
                env.push(format!("HOME={h}"));
            }
        }
        // What the supervisor or `exec` blocked or ignored is inherited:
        // the program starts with default dispositions and no mask.
        crate::attach::unblock_all_signals();
        sys::default_signals();
        sys::set_umask(0o022);
        if self.pdeathsig {
            let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
        }
        if self.ctty {
            let _ = sys::set_controlling_tty(sys::borrow_std(0));
        }
        let f = match process::exec_program(&args, &env) {
            Ok(never) => match never {},
            Err(f) => f,
        };
        match self.err_fd {
            Some(fd) => {
                let _ = nix::unistd::write(sys::borrow_std(fd), &f.encode());
            }
            None => eprintln!("Error: {}", f.message),
        }
        sys::exit_child(f.code)
    }

    fn validate(&self, _spec: &Spec) -> Result<(), ExecutorValidationError> {
        Ok(())
    }
}

fn failure(what: &str, e: impl std::fmt::Display) -> StartFailure {
    StartFailure::runtime(format!("{what}: {e}"))
}

/// A container made by libcontainer; deleted (its cgroups and state, and
/// any process left) on drop.
pub struct Started {
    oci: OciContainer,
    /// The init's host pid (a child of this process).
    pub pid: Pid,
}

impl Drop for Started {
    fn drop(&mut self) {
        // The init of the container's PID namespace: its end ends every
        // process in there, with or without a cgroup to kill (rootless).
        kill_init(self.pid);
        let _ = self.oci.refresh_status();
        let _ = self.oci.delete(true);
    }
}

/// The three descriptors a process gets.
pub struct Stdio {
    /// stdin.
    pub stdin: OwnedFd,
    /// stdout.
    pub stdout: OwnedFd,
    /// stderr.
    pub stderr: OwnedFd,
}

/// Writes `spec` as the bundle's `config.json`.
pub fn write_bundle(paths: &Paths, spec: &serde_json::Value) -> Result<(), StartFailure> {
    let dir = bundle(paths);
    std::fs::create_dir_all(&dir).map_err(|e| failure("create the bundle", e))?;
    let p = dir.join("config.json");
    std::fs::write(
        &p,
        serde_json::to_vec_pretty(spec).expect("a JSON value serialises"),
    )
    .map_err(|e| failure(&format!("write {}", p.display()), e))
}

/// Removes what libcontainer left of an earlier start (a killed
/// supervisor): its state directory, and the cgroups with it.
pub fn clean_stale(paths: &Paths, id: &str) {
    let root = oci_root(paths);
    if let Ok(mut c) = OciContainer::load(root.join(id)) {
        let _ = c.delete(true);
    }
    let _ = std::fs::remove_dir_all(root.join(id));
}

/// Creates and starts container `id` from its bundle; `err_fd` receives
/// an exec failure. The init is this process's child. With `own_netns`,
/// `lo` is brought up in the new network namespace and `on_created` runs
/// with the init's pid before the program starts (the network helper).
pub fn start(
    paths: &Paths,
    id: &str,
    stdio: Stdio,
    err_fd: &OwnedFd,
    ctty: bool,
    own_netns: bool,
    on_created: &mut dyn FnMut(libc::pid_t) -> Result<(), StartFailure>,
) -> Result<Started, StartFailure> {
    clean_stale(paths, id);
    let root = oci_root(paths);
    std::fs::create_dir_all(&root).map_err(|e| failure("create the runtime state", e))?;
    let fd = err_fd.as_raw_fd();
    let mut oci = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_root_path(&root)
        .map_err(|e| failure("runtime state", e))?
        .with_executor(StrataExecutor {
            err_fd: Some(fd),
            ctty,
            pdeathsig: true,
        })
        // Descriptors 3..=fd stay open in the init (the error pipe among
        // them); the executor marks them close-on-exec.
        .with_preserved_fds(fd - 2)
        .with_stdin(stdio.stdin)
        .with_stdout(stdio.stdout)
        .with_stderr(stdio.stderr)
        .as_init(bundle(paths))
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(|e| failure("cannot create the container", e))?;
    let pid = oci.pid();
    if let (Some(p), true) = (pid, own_netns) {
        if let Err(e) = loopback_up_in(libc::pid_t::from(p)) {
            kill_init(our_pid(p));
            let _ = oci.delete(true);
            return Err(failure("bring up lo in the container", e));
        }
        if let Err(f) = on_created(libc::pid_t::from(p)) {
            kill_init(our_pid(p));
            let _ = oci.delete(true);
            return Err(f);
        }
    }
    let started = oci.start();
    let Some(pid) = pid else {
        let _ = oci.delete(true);
        return Err(StartFailure::runtime(
            "cannot create the container: the runtime reported no init process",
        ));
    };
    let s = Started {
        oci,
        pid: our_pid(pid),
    };
    started.map_err(|e| failure("cannot start the container", e))?;
    Ok(s)
}

/// Kills a container's init and reaps it, if it is still an unreaped
/// child of this process (never a recycled pid: a reaped child is no
/// longer ours to wait for).
fn kill_init(pid: Pid) {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    if let Ok(WaitStatus::StillAlive) =
        waitpid(pid, Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL))
    {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = waitpid(pid, Some(WaitPidFlag::__WALL));
    }
}

/// Brings up `lo` in the network namespace of process `pid`, from a
/// thread of its own (setns changes only the calling thread, which then
/// ends).
fn loopback_up_in(pid: libc::pid_t) -> Result<(), LoopbackError> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).map_err(LoopbackError::Open)?;
    std::thread::spawn(move || -> Result<(), LoopbackError> {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(LoopbackError::Enter)?;
        sys::loopback_up().map_err(LoopbackError::Up)
    })
    .join()
    .map_err(|_| LoopbackError::Panicked)?
}

/// Why `lo` could not be brought up in a container's network namespace.
#[derive(Debug, thiserror::Error)]
enum LoopbackError {
    /// Its namespace file.
    #[error("cannot open its network namespace: {0}")]
    Open(std::io::Error),
    /// setns into it.
    #[error("cannot enter its network namespace: {0}")]
    Enter(nix::errno::Errno),
    /// The interface flags.
    #[error("{0}")]
    Up(nix::errno::Errno),
    /// The thread that entered it.
    #[error("the thread panicked")]
    Panicked,
}

/// What `exec` runs.
pub struct ExecSpec {
    /// argv.
    pub args: Vec<String>,
    /// `KEY=VALUE`.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// The user.
    pub user: crate::users::ResolvedUser,
    /// Give it stdin as its controlling terminal.
    pub ctty: bool,
}

/// Starts `spec` in the running container `id` (its namespaces, cgroup,
/// capabilities and seccomp filter); returns the process's pid, a child of
/// this process.
pub fn exec(paths: &Paths, id: &str, spec: ExecSpec, stdio: Stdio) -> Result<Pid, StartFailure> {
    let mut env: HashMap<String, String> = HashMap::new();
    for e in &spec.env {
        let (k, v) = e.split_once('=').unwrap_or((e.as_str(), ""));
        env.insert(k.to_string(), v.to_string());
    }
    env.entry("HOME".into()).or_insert(spec.user.home.clone());
    ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_root_path(oci_root(paths))
        .map_err(|e| failure("runtime state", e))?
        .with_executor(StrataExecutor {
            err_fd: None,
            ctty: spec.ctty,
            pdeathsig: false,
        })
        .with_stdin(stdio.stdin)
        .with_stdout(stdio.stdout)
        .with_stderr(stdio.stderr)
        .as_tenant()
        .with_container_args(spec.args)
        .with_env(env)
        .with_cwd(Some(Path::new(&spec.cwd)))
        .with_user(Some(spec.user.uid))
        .with_group(Some(spec.user.gid))
        .with_additional_gids(spec.user.groups)
        .with_detach(true)
        .build()
        .map(our_pid)
        .map_err(|e| failure("cannot run the command in the container", e))
}
