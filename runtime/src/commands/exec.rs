//! `exec`: a command in a running container's namespaces.

use super::*;

pub(super) fn exec(ctx: &Ctx, a: &ExecArgs) -> Result<i32> {
    let (r, cmd) = a
        .args
        .split_first()
        .ok_or_else(|| anyhow!("no container given"))?;
    let c = ctx.container(r)?;
    let init = c
        .running_init()?
        .ok_or_else(|| anyhow!("container {r} is not running; start it first"))?;
    let mut env = c.config.env.clone();
    spec::apply_env_flags(&mut env, &a.env)?;
    if a.tty {
        env.retain(|e| !e.starts_with("TERM="));
        env.push("TERM=xterm".into());
    }
    let pspec = process::ProcessSpec {
        args: cmd.to_vec(),
        env,
        cwd: a
            .workdir
            .clone()
            .unwrap_or_else(|| c.config.workdir.clone()),
        user: a.user.clone().unwrap_or_else(|| c.config.user.clone()),
    };
    let ns: Vec<(fs::File, nix::sched::CloneFlags)> = [
        ("ipc", nix::sched::CloneFlags::CLONE_NEWIPC),
        ("uts", nix::sched::CloneFlags::CLONE_NEWUTS),
        ("net", nix::sched::CloneFlags::CLONE_NEWNET),
        ("pid", nix::sched::CloneFlags::CLONE_NEWPID),
        ("mnt", nix::sched::CloneFlags::CLONE_NEWNS),
    ]
    .into_iter()
    .map(|(n, f)| {
        let p = format!("/proc/{}/ns/{n}", init.pid);
        fs::File::open(&p)
            .map(|file| (file, f))
            .with_context(|| format!("open {p}"))
    })
    .collect::<Result<_>>()?;
    let pty = if a.tty {
        Some(attach::open_pty().context("cannot allocate a terminal")?)
    } else {
        None
    };
    attach::block_signals();
    let child = match sys::fork()? {
        Forked::Child => {
            attach::unblock_all_signals();
            let code = exec_child(
                &ns,
                &pspec,
                pty.as_ref().map(|p| &p.slave),
                a.interactive || a.detach,
            );
            sys::exit_child(code)
        }
        Forked::Parent(pid) => pid,
    };
    // Our copy of the slave closes here, so the master sees EOF when the
    // command's last process exits.
    let master = pty.map(|p| p.master);
    if a.detach {
        return Ok(0);
    }
    Ok(attach::run(
        child,
        attach::Attach {
            master,
            forward_stdin: a.interactive,
        },
        &|| None,
    ))
}

/// The command's own process, inside the container's namespaces.
pub(super) fn exec_grandchild(
    spec: &process::ProcessSpec,
    slave: Option<&std::os::fd::OwnedFd>,
    keep_stdin: bool,
) -> std::result::Result<std::convert::Infallible, process::StartFailure> {
    sys::default_signals();
    if let Some(s) = slave {
        let _ = nix::unistd::setsid();
        for fd in 0..3 {
            let _ = sys::dup_onto(s.as_fd(), fd);
        }
        let _ = sys::set_controlling_tty(sys::borrow_std(0));
    } else if !keep_stdin {
        if let Ok(null) = sys::dev_null() {
            let _ = sys::dup_onto(null.as_fd(), 0);
        }
    }
    process::exec(spec)
}

/// In the forked child of `exec`: enter the namespaces, fork once more (to
/// be inside the PID namespace), and run the command there.
pub(super) fn exec_child(
    ns: &[(fs::File, nix::sched::CloneFlags)],
    spec: &process::ProcessSpec,
    slave: Option<&std::os::fd::OwnedFd>,
    keep_stdin: bool,
) -> i32 {
    for (f, flag) in ns {
        if let Err(e) = nix::sched::setns(f.as_fd(), *flag) {
            eprintln!("Error: cannot enter the container's {flag:?} namespace: {e}");
            return EXIT_RUNTIME;
        }
    }
    match sys::fork() {
        Ok(Forked::Child) => {
            let r = exec_grandchild(spec, slave, keep_stdin);
            let f = match r {
                Ok(never) => match never {},
                Err(f) => f,
            };
            eprintln!("Error: {}", f.message);
            sys::exit_child(f.code)
        }
        Ok(Forked::Parent(pid)) => attach::wait_exit(pid),
        Err(e) => {
            eprintln!("Error: fork: {e}");
            EXIT_RUNTIME
        }
    }
}
