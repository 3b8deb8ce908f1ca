//! A container's files: commit, export, cp, and the views and mount
//! daemons they use; container inspect.

use std::fs;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command as Proc, Stdio};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use strata_layerdb::CommitMeta;

use super::lifecycle::read_report;
use super::{parse_changes, Ctx};
use crate::cli::CommitArgs;
use crate::container::{Container, Status};
use crate::mounts::{self, ServedMount};
use crate::proc::{self, ProcId};
use crate::{supervisor, sys};

pub(super) fn pause_all(init: &ProcId, sig: Signal) {
    for pid in proc::pids_in_namespace_of(init.pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

/// `commit`: the container's upper layer becomes a layer on its image.
///
/// Guarantee: a running container is paused (every process of its PID
/// namespace gets SIGSTOP, as docker's freezer pause) and its filesystem is
/// synced (`syncfs` on the mount, flushing cached writes into the upper
/// directory) before the upper is read, and resumed afterwards; so the
/// layer holds every write that returned before the commit, and no file is
/// being changed while it is packed. A write a program has only half made
/// (two `write` calls of one record) is the program's business, as in
/// docker. With `--pause=false` the container keeps running and only the
/// sync is done.
fn commit(
    ctx: &Ctx,
    c: &Container,
    message: Option<String>,
    author: Option<String>,
    changes: &[String],
    pause: bool,
    name: Option<&str>,
) -> Result<strata_layerdb::ImageId> {
    let changes = parse_changes(changes)?;
    let meta = CommitMeta {
        created_by: Some(c.config.args.join(" ")),
        comment: message,
        author,
        changes,
        created: None,
        config: None,
    };
    let running = c.running_init()?;
    if let Some(init) = &running {
        if pause {
            pause_all(init, Signal::SIGSTOP);
        }
        if let Ok(f) = fs::File::open(c.paths.merged()) {
            let _ = nix::unistd::syncfs(f.as_fd());
        }
    }
    let parent = c.config.image_id.to_string();
    let r = ctx
        .store
        .commit(Some(&parent), &c.paths.upper(), &meta, name)
        .with_context(|| format!("cannot commit container {}", c.config.name));
    if let Some(init) = &running {
        if pause {
            pause_all(init, Signal::SIGCONT);
        }
    }
    r
}

/// `diff`: the container's changes, one `KIND PATH` line each.
pub(super) fn diff(ctx: &Ctx, container: &str) -> Result<i32> {
    let c = ctx.container(container)?;
    let lowers = ctx.store.lower_dirs(&c.config.image_id)?;
    let mut out = std::io::stdout().lock();
    let changes = crate::diff::changes(&c.paths.upper(), &lowers)
        .with_context(|| format!("cannot read the changes of {}", c.config.name))?;
    for ch in changes {
        writeln!(out, "{} {}", ch.kind.letter(), ch.path)?;
    }
    Ok(0)
}

/// `commit`: prints the new image's ID.
pub(super) fn commit_cmd(ctx: &Ctx, a: &CommitArgs) -> Result<i32> {
    let c = ctx.container(&a.container)?;
    let id = commit(
        ctx,
        &c,
        a.message.clone(),
        a.author.clone(),
        &a.change,
        a.pause,
        a.name.as_deref(),
    )?;
    println!("{id}");
    Ok(0)
}

/// `export`: to `output`, or to stdout when it is not a terminal.
pub(super) fn export_cmd(ctx: &Ctx, container: &str, output: &Option<PathBuf>) -> Result<i32> {
    let c = ctx.container(container)?;
    export(ctx, &c, output.as_deref())?;
    Ok(0)
}

/// `mount`: the container's filesystem served by a mount daemon unless it
/// is mounted already; prints where.
pub(super) fn mount(ctx: &Ctx, container: &str) -> Result<i32> {
    let c = ctx.container(container)?;
    let merged = c.paths.merged();
    if !proc::is_mounted(&merged) {
        let lowers = supervisor::lower_dirs(&ctx.store, &c)?;
        spawn_mount_daemon(
            &ctx.root,
            &lowers,
            Some((c.paths.upper(), c.paths.work())),
            &merged,
        )?;
    }
    println!("{}", merged.display());
    Ok(0)
}

/// `umount`: refused while the container runs (its supervisor owns the
/// mount then).
pub(super) fn umount(ctx: &Ctx, container: &str) -> Result<i32> {
    let c = ctx.container(container)?;
    if c.running_init()?.is_some() {
        bail!("container {container} is running; its filesystem stays mounted until it stops");
    }
    proc::unmount_all_under(&c.paths.dir);
    println!("{container}");
    Ok(0)
}

/// A view of a container's merged filesystem: the live mount when it
/// runs (or is mounted), else a mount served by this process for the life
/// of the guard.
pub(super) struct View {
    path: PathBuf,
    _served: Option<ServedMount>,
    dir: Option<PathBuf>,
}

impl Drop for View {
    fn drop(&mut self) {
        self._served.take();
        if let Some(d) = &self.dir {
            let _ = fs::remove_dir(d);
        }
    }
}

pub(super) fn view(ctx: &Ctx, c: &Container, writable: bool) -> Result<View> {
    let merged = c.paths.merged();
    if proc::is_mounted(&merged) {
        return Ok(View {
            path: merged,
            _served: None,
            dir: None,
        });
    }
    let dir = c.paths.dir.join(format!("view-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    let mut lowers = supervisor::lower_dirs(&ctx.store, c)?;
    let opts = if writable {
        mounts::options(lowers, Some((c.paths.upper(), c.paths.work())))
    } else {
        lowers.insert(0, c.paths.upper());
        mounts::options(lowers, None)
    };
    let served = match ServedMount::mount(opts, &dir) {
        Ok(s) => s,
        Err(e) => {
            let _ = fs::remove_dir(&dir);
            return Err(anyhow!("cannot mount the container's filesystem: {e}"));
        }
    };
    Ok(View {
        path: served.path().to_path_buf(),
        _served: Some(served),
        dir: Some(dir),
    })
}

pub(super) fn export(ctx: &Ctx, c: &Container, output: Option<&Path>) -> Result<()> {
    // The output is made before any mount: serving a mount sets this
    // process's umask to 0 (the filesystem creates exact modes).
    match output {
        Some(p) => {
            let f = fs::File::create(p).with_context(|| format!("create {}", p.display()))?;
            let mut w = std::io::BufWriter::new(f);
            let r = view(ctx, c, false).and_then(|v| {
                strata_layerdb::export_dir(&v.path, &mut w)?;
                w.flush()?;
                Ok(())
            });
            if r.is_err() {
                let _ = fs::remove_file(p);
            }
            r?;
        }
        None => {
            if sys::is_tty(std::io::stdout()) {
                bail!("refusing to write an archive to a terminal; use -o FILE or redirect stdout");
            }
            let v = view(ctx, c, false)?;
            let mut out = std::io::stdout().lock();
            strata_layerdb::export_dir(&v.path, &mut out)?;
            out.flush()?;
        }
    }
    Ok(())
}

pub(super) fn cp(ctx: &Ctx, src: &str, dst: &str) -> Result<i32> {
    let split = |s: &str| -> Option<(String, String)> {
        if s.starts_with('/') || s.starts_with('.') {
            return None;
        }
        s.split_once(':')
            .map(|(a, b)| (a.to_string(), b.to_string()))
    };
    match (split(src), split(dst)) {
        (Some((cref, cpath)), None) => {
            let c = ctx.container(&cref)?;
            let v = view(ctx, &c, false)?;
            let root = crate::beneath::Root::open(&v.path)?;
            let from = Path::new(&cpath);
            let mut to = PathBuf::from(dst);
            if to.is_dir() {
                let name = from
                    .file_name()
                    .ok_or_else(|| anyhow!("{cref}:{cpath}: give a path below /"))?;
                to = to.join(name);
            }
            crate::cp::copy_out(&root, from, &to)?;
        }
        (None, Some((cref, cpath))) => {
            let c = ctx.container(&cref)?;
            let v = view(ctx, &c, true)?;
            let root = crate::beneath::Root::open(&v.path)?;
            let from = PathBuf::from(src);
            let name = from
                .file_name()
                .ok_or_else(|| anyhow!("{src}: give a file or directory name"))?;
            let to = crate::cp::target_in(&root, Path::new(&cpath), name);
            crate::cp::copy_in(&from, &root, &to)?;
        }
        _ => {
            bail!("copy between a container and the host: one of the paths must be CONTAINER:PATH")
        }
    }
    Ok(0)
}

pub(super) fn spawn_mount_daemon(
    root: &Path,
    lowers: &[PathBuf],
    upper: Option<(PathBuf, PathBuf)>,
    dir: &Path,
) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the strata executable")?;
    let mut cmd = Proc::new(exe);
    cmd.arg("--root").arg(root).arg("__serve-mount");
    for l in lowers {
        cmd.arg("--lower").arg(l);
    }
    if let Some((u, w)) = upper {
        cmd.arg("--upper").arg(u).arg("--work").arg(w);
    }
    cmd.arg(dir);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().context("cannot start the mount server")?;
    read_report(&mut child)
}

fn security_opts(s: &crate::security::Security) -> Vec<String> {
    let mut v = Vec::new();
    if s.seccomp_unconfined {
        v.push("seccomp=unconfined".to_string());
    } else if s.seccomp_profile.is_some() {
        v.push("seccomp=PROFILE".to_string());
    }
    if s.no_new_privileges {
        v.push("no-new-privileges".to_string());
    }
    v
}

pub(super) fn container_json(ctx: &Ctx, c: &Container) -> Result<Value> {
    let s = c.state()?;
    let cfg = &c.config;
    let lowers = supervisor::lower_dirs(&ctx.store, c)
        .map(|v| {
            v.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(":")
        })
        .unwrap_or_default();
    Ok(json!({
        "Id": cfg.id.as_str(),
        "Created": cfg.created,
        "Path": cfg.args.first(),
        "Args": cfg.args.get(1..).unwrap_or(&[]),
        "State": {
            "Status": s.status.docker_name(),
            "Running": s.status == Status::Running,
            "Pid": s.init.map(|p| p.pid).unwrap_or(0),
            "ExitCode": s.exit_code.unwrap_or(0),
            "Error": s.error.clone().unwrap_or_default(),
            "StartedAt": s.started_at,
            "FinishedAt": s.finished_at,
            "SupervisorPid": s.supervisor.map(|p| p.pid).unwrap_or(0),
        },
        "Image": cfg.image_id.to_string(),
        "ImageName": cfg.image,
        "Name": cfg.name,
        "Config": {
            "Hostname": cfg.hostname,
            "User": cfg.user,
            "Env": cfg.env,
            "Cmd": cfg.args,
            "WorkingDir": cfg.workdir,
            "Tty": cfg.tty,
            "OpenStdin": cfg.interactive,
            "Image": cfg.image,
            "StopSignal": cfg.stop_signal,
        },
        "HostConfig": {
            "AutoRemove": cfg.auto_remove,
            "NetworkMode": crate::network::name(cfg.network),
            "PortBindings": crate::network::ports_json(&cfg.ports),
            "Binds": cfg.volumes.iter().map(|v| format!("{}:{}{}", v.host.display(), v.target, if v.read_only { ":ro" } else { "" })).collect::<Vec<_>>(),
            "Privileged": cfg.security.privileged,
            "CapAdd": cfg.security.cap_add,
            "CapDrop": cfg.security.cap_drop,
            "SecurityOpt": security_opts(&cfg.security),
            "Memory": cfg.resources.memory.unwrap_or(0),
            "MemorySwap": cfg.resources.memory_swap.unwrap_or(0),
            "NanoCpus": cfg.resources.nano_cpus.unwrap_or(0),
            "CpuShares": cfg.resources.cpu_shares.unwrap_or(0),
            "PidsLimit": cfg.resources.pids_limit.unwrap_or(0),
        },
        "NetworkSettings": {
            "Ports": crate::network::ports_json(&crate::network::running_ports(c)),
        },
        "GraphDriver": {"Name": "strata", "Data": {
            "LowerDir": lowers,
            "UpperDir": c.paths.upper(),
            "WorkDir": c.paths.work(),
            "MergedDir": c.paths.merged(),
        }},
        "LogPath": c.paths.log(),
    }))
}
