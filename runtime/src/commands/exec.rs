//! `exec`: a command in a running container, started by libcontainer as a
//! tenant of the container (its namespaces, cgroup, capabilities and
//! seccomp filter). It runs in a session of its own: without `-t` it has
//! no controlling terminal (nothing of the caller's terminal to push input
//! into with TIOCSTI); with `-t` a fresh pty is its controlling terminal.

use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{anyhow, Context, Result};

use super::{Ctx, Exit};
use crate::cli::ExecArgs;
use crate::{attach, spec, sys};

use crate::beneath::Root;

pub(super) fn exec(ctx: &Ctx, a: &ExecArgs) -> Result<i32> {
    let (r, cmd) = a
        .args
        .split_first()
        .ok_or_else(|| anyhow!("no container given"))?;
    let c = ctx.container(r)?;
    c.running_init()?
        .ok_or_else(|| anyhow!("container {r} is not running; start it first"))?;
    let mut env = c.config.env.clone();
    spec::apply_env_flags(&mut env, &a.env)?;
    if a.tty {
        env.retain(|e| !e.starts_with("TERM="));
        env.push("TERM=xterm".into());
    }
    let root =
        Root::open(&c.paths.merged()).with_context(|| format!("open the root of container {r}"))?;
    let text = |p: &str| {
        root.read(Path::new(p))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    let user_spec = a.user.clone().unwrap_or_else(|| c.config.user.clone());
    let user = crate::users::resolve(&user_spec, &text("/etc/passwd"), &text("/etc/group"))
        .map_err(|e| anyhow!(e))?;
    let pty = if a.tty {
        Some(attach::open_pty().context("cannot allocate a terminal")?)
    } else {
        None
    };
    let dup = |fd: std::os::fd::BorrowedFd<'_>| -> Result<std::os::fd::OwnedFd> {
        Ok(nix::unistd::dup(fd)?)
    };
    let stdio = match &pty {
        Some(p) => crate::launch::Stdio {
            stdin: dup(p.slave.as_fd())?,
            stdout: dup(p.slave.as_fd())?,
            stderr: dup(p.slave.as_fd())?,
        },
        None => crate::launch::Stdio {
            stdin: if a.interactive || a.detach {
                dup(sys::borrow_std(0))?
            } else {
                sys::dev_null()?
            },
            stdout: dup(sys::borrow_std(1))?,
            stderr: dup(sys::borrow_std(2))?,
        },
    };
    let spec = crate::launch::ExecSpec {
        args: cmd.to_vec(),
        env,
        cwd: a
            .workdir
            .clone()
            .unwrap_or_else(|| c.config.workdir.clone()),
        user,
        ctty: a.tty,
    };
    attach::block_signals();
    let child = crate::launch::exec(&c.paths, c.id().as_str(), spec, stdio).map_err(|f| Exit {
        code: f.code,
        message: f.message,
    })?;
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
