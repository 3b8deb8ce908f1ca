//! A container's life: create, run, start (attached or detached), ps, stop,
//! rm, logs and attach.

use std::fs;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::{Command as Proc, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::Signal;
use serde_json::json;

use super::{Ctx, Exit};
use crate::attach;
use crate::cli::{PsArgs, RunArgs, StartArgs};
use crate::container::{Container, State, Status};
use crate::format::{self, ago, parse_rfc3339, Table};
use crate::ids::ContainerId;
use crate::proc::{self, ProcId};
use crate::process::{self, EXIT_RUNTIME};
use crate::signal::parse as parse_signal;
use crate::spec::{self, RunFlags};

pub(super) fn run_flags(a: &RunArgs) -> Result<RunFlags> {
    let security = crate::security::Security::from_flags(
        a.privileged,
        &a.cap_add,
        &a.cap_drop,
        &a.security_opt,
    )?;
    let resources = crate::resources::Resources::from_flags(
        a.memory.as_deref(),
        a.memory_swap.as_deref(),
        a.cpus.as_deref(),
        a.cpu_shares,
        a.pids_limit,
    )?;
    Ok(RunFlags {
        name: a.name.clone(),
        env: a.env.clone(),
        env_files: a.env_file.clone(),
        workdir: a.workdir.clone(),
        user: a.user.clone(),
        hostname: a.hostname.clone(),
        entrypoint: a.entrypoint.clone(),
        volumes: a.volume.clone(),
        network: Some(
            a.network
                .clone()
                .unwrap_or_else(|| crate::network::DEFAULT_MODE.into()),
        ),
        publish: a.publish.clone(),
        tty: a.tty,
        interactive: a.interactive,
        auto_remove: a.rm,
        security,
        resources,
    })
}

/// `create`: a container directory, its init layer, and a user mark on its
/// image (so `rmi` refuses while it exists).
pub(super) fn create_container(ctx: &Ctx, a: &RunArgs) -> Result<Container> {
    let (image_ref, cmd) = a
        .args
        .split_first()
        .ok_or_else(|| anyhow!("no image given"))?;
    let info = ctx.store.inspect(image_ref)?;
    let id = ContainerId::generate();
    let config = spec::build(id, image_ref, &info, cmd, &run_flags(a)?)?;
    if config.resources != crate::resources::Resources::default()
        && strata_fs::sys::in_user_namespace()
    {
        eprintln!(
            "WARNING: resource limits are ignored: a rootless container cannot set cgroup limits without cgroup v2 delegation"
        );
    }
    let lowers: Vec<PathBuf> = info.layers.iter().rev().map(|l| l.path.clone()).collect();
    let c = ctx.reg.create(config, |paths, cfg| {
        crate::rootfs::prepare_init_layer(paths, cfg, &lowers).map_err(|err| {
            crate::container::Error::Io {
                op: "prepare the init layer in",
                path: paths.dir.clone(),
                err,
            }
        })
    })?;
    if let Err(e) = ctx.store.add_image_user(&info.id, c.id().as_str()) {
        let _ = ctx.reg.delete(&c);
        return Err(e.into());
    }
    Ok(c)
}

pub(super) fn run(ctx: &Ctx, a: &RunArgs) -> Result<i32> {
    let c = create_container(ctx, a)?;
    if a.detach {
        start_detached(ctx, &c)?;
        println!("{}", c.id());
        Ok(0)
    } else {
        start_attached(ctx, &c, a.interactive)
    }
}

/// `create`: prints the new container's ID.
pub(super) fn create(ctx: &Ctx, a: &RunArgs) -> Result<i32> {
    let c = create_container(ctx, a)?;
    println!("{}", c.id());
    Ok(0)
}

/// `start`: attached (one container, its exit code) or detached (each
/// container not running yet, its reference printed).
pub(super) fn start(ctx: &Ctx, a: &StartArgs) -> Result<i32> {
    if a.attach || a.interactive {
        if a.containers.len() != 1 {
            bail!("you cannot attach to more than one container");
        }
        let c = ctx.container(&a.containers[0])?;
        return start_attached(ctx, &c, a.interactive);
    }
    for r in &a.containers {
        let c = ctx.container(r)?;
        if c.running_init()?.is_none() {
            start_detached(ctx, &c)?;
        }
        println!("{r}");
    }
    Ok(0)
}

/// `stop`: each container in turn, its reference printed.
pub(super) fn stop_all(ctx: &Ctx, time: u64, containers: &[String]) -> Result<i32> {
    for r in containers {
        let c = ctx.container(r)?;
        stop(&c, time)?;
        println!("{r}");
    }
    Ok(0)
}

/// `kill`: the signal to each container's init; after SIGKILL, returns
/// once the container has stopped.
pub(super) fn kill_all(ctx: &Ctx, signal: &str, containers: &[String]) -> Result<i32> {
    let sig = parse_signal(signal)?;
    for r in containers {
        let c = ctx.container(r)?;
        let init = c
            .running_init()?
            .ok_or_else(|| anyhow!("cannot kill container {r}: it is not running"))?;
        init.signal(sig)
            .with_context(|| format!("cannot send {sig} to container {r}"))?;
        if sig == Signal::SIGKILL {
            wait_stopped(&c, Duration::from_secs(30));
        }
        println!("{r}");
    }
    Ok(0)
}

/// `restart`: stop, then start detached.
pub(super) fn restart_all(ctx: &Ctx, time: u64, containers: &[String]) -> Result<i32> {
    for r in containers {
        let c = ctx.container(r)?;
        stop(&c, time)?;
        start_detached(ctx, &c)?;
        println!("{r}");
    }
    Ok(0)
}

/// `rm`: every container is tried; a failure is printed and makes the exit
/// code 125.
pub(super) fn remove_all(ctx: &Ctx, force: bool, containers: &[String]) -> Result<i32> {
    let mut failed = None;
    for r in containers {
        match ctx.container(r).and_then(|c| remove(ctx, &c, force)) {
            Ok(()) => println!("{r}"),
            Err(e) => {
                eprintln!("Error: {e:#}");
                failed = Some(EXIT_RUNTIME);
            }
        }
    }
    Ok(failed.unwrap_or(0))
}

pub(super) fn supervisor_command(ctx: &Ctx, c: &Container, detach: bool) -> Result<Proc> {
    let exe = std::env::current_exe().context("cannot find the strata executable")?;
    let mut cmd = Proc::new(exe);
    cmd.arg("--root").arg(&ctx.root).arg("__supervise");
    if detach {
        cmd.arg("--detach");
    }
    cmd.arg(c.id().as_str());
    Ok(cmd)
}

/// Reads the supervisor's one-line report.
pub(super) fn read_report(child: &mut std::process::Child) -> Result<()> {
    let out = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no pipe to the supervisor"))?;
    let mut line = String::new();
    let _ = std::io::BufReader::new(out).read_line(&mut line);
    let line = line.trim_end();
    if line == "ok" {
        return Ok(());
    }
    if let Some(rest) = line.strip_prefix("error ") {
        let f = process::StartFailure::decode(rest.as_bytes());
        let _ = child.wait();
        return Err(Exit {
            code: f.code,
            message: f.message,
        }
        .into());
    }
    let st = child.wait()?;
    Err(anyhow!(
        "the supervisor exited without starting the container ({st})"
    ))
}

/// Starts a container in the background; returns once its process runs.
pub fn start_detached(ctx: &Ctx, c: &Container) -> Result<()> {
    let mut cmd = supervisor_command(ctx, c, true)?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().context("cannot start the supervisor")?;
    read_report(&mut child)
}

/// Starts a container attached to this terminal; returns its exit code.
pub fn start_attached(ctx: &Ctx, c: &Container, interactive: bool) -> Result<i32> {
    if c.running_init()?.is_some() {
        bail!("container {} is already running", c.config.name);
    }
    let mut cmd = supervisor_command(ctx, c, false)?;
    let stdin_open = interactive || c.config.interactive;
    attach::block_signals();
    let master = if c.config.tty {
        let pty = attach::open_pty().context("cannot allocate a terminal")?;
        let slave = pty.slave;
        cmd.stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave));
        Some(pty.master)
    } else {
        cmd.stdin(if stdin_open {
            Stdio::inherit()
        } else {
            Stdio::null()
        });
        None
    };
    let child = cmd.spawn().context("cannot start the supervisor")?;
    drop(cmd);
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let target = || c.running_init().ok().flatten();
    let code = attach::run(
        pid,
        attach::Attach {
            master,
            forward_stdin: stdin_open,
        },
        &target,
    );
    Ok(code)
}

pub(super) fn status_text(s: &State) -> String {
    let since = |t: &Option<String>| t.as_deref().and_then(parse_rfc3339);
    match s.status {
        Status::Running => format!(
            "Up {}",
            format::human_duration(
                format::now_secs() - since(&s.started_at).unwrap_or_else(format::now_secs)
            )
        ),
        Status::Exited => format!(
            "Exited ({}) {}",
            s.exit_code.unwrap_or(0),
            ago(since(&s.finished_at))
        ),
        Status::Created | Status::Starting => "Created".into(),
    }
}

pub(super) fn ps(ctx: &Ctx, a: &PsArgs) -> Result<i32> {
    let (all, quiet, no_trunc, fmt) = (a.all, a.quiet, a.no_trunc, a.format.as_deref());
    let mut rows = Vec::new();
    let mut list = ctx.reg.list()?;
    list.reverse();
    for c in &list {
        let s = match c.state() {
            Ok(s) => s,
            // Removed while we listed (`rm`, `--rm`): not there any more.
            Err(crate::container::Error::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        if !all && s.status != Status::Running {
            continue;
        }
        let id = if no_trunc {
            c.id().as_str()
        } else {
            c.id().short()
        };
        let created = parse_rfc3339(&c.config.created);
        rows.push(json!({
            "ID": id,
            "Id": c.id().as_str(),
            "Image": c.config.image,
            "Command": if no_trunc { format!("\"{}\"", c.config.args.join(" ")) } else { format::command_column(&c.config.args) },
            "CreatedAt": c.config.created,
            "RunningFor": ago(created),
            "Status": status_text(&s),
            "State": s.status.docker_name(),
            "ExitCode": s.exit_code,
            "Names": c.config.name,
            "Pid": s.init.map(|p| p.pid),
            "Ports": crate::network::ports_column(&crate::network::running_ports(c)),
        }));
    }
    if quiet {
        for r in &rows {
            println!("{}", r["ID"].as_str().unwrap_or(""));
        }
        return Ok(0);
    }
    match fmt {
        Some("json") => println!("{}", serde_json::to_string_pretty(&rows)?),
        Some(tpl) => {
            for r in &rows {
                println!("{}", format::go_template(tpl, r));
            }
        }
        None => {
            let mut t = Table::new(&[
                "CONTAINER ID",
                "IMAGE",
                "COMMAND",
                "CREATED",
                "STATUS",
                "PORTS",
                "NAMES",
            ]);
            for r in &rows {
                let g = |k: &str| r[k].as_str().unwrap_or("").to_string();
                t.row(vec![
                    g("ID"),
                    g("Image"),
                    g("Command"),
                    g("RunningFor"),
                    g("Status"),
                    g("Ports"),
                    g("Names"),
                ]);
            }
            print!("{}", t.render());
        }
    }
    Ok(0)
}

/// Waits (bounded) until the container's supervisor is gone.
pub(super) fn wait_stopped(c: &Container, limit: Duration) -> bool {
    let start = Instant::now();
    loop {
        let alive = c
            .stored_state()
            .ok()
            .and_then(|s| s.supervisor)
            .is_some_and(|p| p.is_alive());
        if !alive {
            let _ = c.state();
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `stop`: the stop signal, then SIGKILL after `secs`; returns once the
/// supervisor has recorded the exit and unmounted.
pub fn stop(c: &Container, secs: u64) -> Result<()> {
    let Some(init) = c.running_init()? else {
        return Ok(());
    };
    let sig = c
        .config
        .stop_signal
        .as_deref()
        .and_then(|s| parse_signal(s).ok())
        .unwrap_or(Signal::SIGTERM);
    let _ = init.signal(sig);
    if !wait_stopped(c, Duration::from_secs(secs)) {
        let _ = init.signal(Signal::SIGKILL);
        if !wait_stopped(c, Duration::from_secs(60)) {
            bail!("container {} did not stop", c.config.name);
        }
    }
    Ok(())
}

/// `rm`: refuses a running container unless forced; unmounts what is left
/// (lazily), deletes the directory, and releases the image.
pub fn remove(ctx: &Ctx, c: &Container, force: bool) -> Result<()> {
    if let Some(init) = c.running_init()? {
        if !force {
            bail!(
                "cannot remove container {}: it is running; stop it first or use rm -f",
                c.config.name
            );
        }
        let _ = init.signal(Signal::SIGKILL);
        if !wait_stopped(c, Duration::from_secs(60)) {
            bail!("container {} did not stop", c.config.name);
        }
    } else if let Some(sup) = c.stored_state()?.supervisor.filter(ProcId::is_alive) {
        // Starting: stop the supervisor's attempt.
        if !force {
            bail!("cannot remove container {}: it is starting", c.config.name);
        }
        let _ = sup.signal(Signal::SIGKILL);
        wait_stopped(c, Duration::from_secs(10));
    }
    crate::network::stop_leftover(&c.paths);
    proc::unmount_all_under(&c.paths.dir);
    ctx.reg.delete(c)?;
    ctx.store
        .remove_image_user(&c.config.image_id, c.id().as_str())?;
    Ok(())
}

/// `port CONTAINER [PORT[/PROTO]]`: `80/tcp -> 127.0.0.1:8080` per
/// mapping of a running container, or the host sides of one port.
pub(super) fn port(ctx: &Ctx, r: &str, which: Option<&str>) -> Result<i32> {
    let c = ctx.container(r)?;
    let ports = crate::network::running_ports(&c);
    match which {
        None => {
            for p in &ports {
                println!("{} -> {}", p.container_key(), p.host_side());
            }
        }
        Some(w) => {
            let key = if w.contains('/') {
                w.to_string()
            } else {
                format!("{w}/tcp")
            };
            let found: Vec<_> = ports.iter().filter(|p| p.container_key() == key).collect();
            if found.is_empty() {
                bail!("no public port '{key}' published for {}", c.config.name);
            }
            for p in found {
                println!("{}", p.host_side());
            }
        }
    }
    Ok(0)
}

pub(super) fn logs(ctx: &Ctx, r: &str, follow: bool) -> Result<i32> {
    let c = ctx.container(r)?;
    let mut f = match fs::File::open(c.paths.log()) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).context("open the log"),
    };
    let mut out = std::io::stdout();
    loop {
        std::io::copy(&mut f, &mut out)?;
        out.flush()?;
        if !follow {
            return Ok(0);
        }
        if c.running_init()?.is_none() {
            std::io::copy(&mut f, &mut out)?;
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `attach`: the output a detached container writes from now on, until it
/// exits; then its exit code.
pub(super) fn attach_logs(ctx: &Ctx, r: &str) -> Result<i32> {
    use std::io::Seek;
    let c = ctx.container(r)?;
    if c.running_init()?.is_none() {
        bail!("container {r} is not running; start it with 'strata start -a'");
    }
    let mut f = fs::File::open(c.paths.log()).context("open the log")?;
    f.seek(std::io::SeekFrom::End(0))?;
    let mut out = std::io::stdout();
    loop {
        std::io::copy(&mut f, &mut out)?;
        out.flush()?;
        let s = c.state()?;
        if !s.supervisor.is_some_and(|p| p.is_alive()) {
            std::io::copy(&mut f, &mut out)?;
            return Ok(c.state()?.exit_code.unwrap_or(0));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
