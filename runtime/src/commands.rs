//! One function per `strata` command. They print what docker and podman
//! print, and return the process exit code; errors carry the code they
//! should exit with ([`Exit`], else 125).

use std::fs;
use std::io::{BufRead, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command as Proc, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use strata_layerdb::{
    CommitMeta, Compression, ConfigChange, ImportOptions, LoadOptions, Removed, SaveFormat, Store,
};

use crate::attach;
use crate::cli::{Cli, Command, ExecArgs, ImageCommand, ImagesArgs, RunArgs, SystemCommand};
use crate::container::{Container, Registry, State, Status};
use crate::format::{self, ago, human_size, parse_rfc3339, Table};
use crate::ids::ContainerId;
use crate::mounts::{self, ServedMount};
use crate::proc::{self, ProcId};
use crate::process::{self, EXIT_RUNTIME};
use crate::spec::{self, RunFlags};
use crate::supervisor::{self, Mode};
use crate::sys::{self, Forked};

/// An error that exits with a particular code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    /// The exit code.
    pub code: i32,
    /// The message.
    pub message: String,
}

/// The exit code for an error: its [`Exit`] code, or 125.
pub fn exit_code_of(e: &anyhow::Error) -> i32 {
    e.downcast_ref::<Exit>()
        .map(|x| x.code)
        .unwrap_or(EXIT_RUNTIME)
}

/// What every command works on.
pub struct Ctx {
    /// The store root.
    pub root: PathBuf,
    /// The image store.
    pub store: Store,
    /// The containers.
    pub reg: Registry,
}

impl Ctx {
    fn open(root: Option<PathBuf>) -> Result<Ctx> {
        let root = Store::default_root(root.as_deref());
        let store = Store::open(&root)
            .with_context(|| format!("cannot open the store at {}", root.display()))?;
        let reg = Registry::open(&root)
            .with_context(|| format!("cannot open the store at {}", root.display()))?;
        Ok(Ctx { root, store, reg })
    }

    fn container(&self, r: &str) -> Result<Container> {
        Ok(self.reg.find(r)?)
    }
}

/// Runs a parsed command line.
pub fn dispatch(cli: Cli) -> Result<i32> {
    let ctx = Ctx::open(cli.root)?;
    match cli.command {
        Command::Images(a) | Command::Image(ImageCommand::Ls(a)) => images(&ctx, &a),
        Command::Import(a) => {
            let mut input: Box<dyn Read> = if a.file == "-" {
                Box::new(std::io::stdin())
            } else {
                Box::new(fs::File::open(&a.file).with_context(|| format!("open {}", a.file))?)
            };
            let changes = parse_changes(&a.change)?;
            let id = ctx.store.import(
                &mut input,
                &ImportOptions {
                    name: a.name.clone(),
                    changes,
                    comment: a.message.clone(),
                    created: None,
                },
            )?;
            println!("{id}");
            Ok(0)
        }
        Command::Load(a) => {
            let loaded = match &a.input {
                Some(p) => ctx.store.load(p, &LoadOptions::default())?,
                None => ctx
                    .store
                    .load_reader(&mut std::io::stdin(), &LoadOptions::default())?,
            };
            if !a.quiet {
                for l in loaded {
                    if l.names.is_empty() {
                        println!("Loaded image ID: {}", l.id);
                    }
                    for n in l.names {
                        println!("Loaded image: {n}");
                    }
                }
            }
            Ok(0)
        }
        Command::Save(a) => save(&ctx, &a),
        Command::Tag { source, target } => {
            ctx.store.tag(&source, &target)?;
            Ok(0)
        }
        Command::Rmi { force, images } | Command::Image(ImageCommand::Rm { force, images }) => {
            rmi(&ctx, &images, force)
        }
        Command::History {
            no_trunc,
            quiet,
            image,
        } => history(&ctx, &image, no_trunc, quiet),
        Command::Inspect {
            format,
            kind,
            names,
        } => inspect(&ctx, &names, kind.as_deref(), format.as_deref()),
        Command::Create(a) => {
            let c = create(&ctx, &a)?;
            println!("{}", c.id());
            Ok(0)
        }
        Command::Run(a) => run(&ctx, &a),
        Command::Start {
            attach,
            interactive,
            containers,
        } => {
            if attach || interactive {
                if containers.len() != 1 {
                    bail!("you cannot attach to more than one container");
                }
                let c = ctx.container(&containers[0])?;
                return start_attached(&ctx, &c, interactive);
            }
            for r in &containers {
                let c = ctx.container(r)?;
                if c.running_init()?.is_none() {
                    start_detached(&ctx, &c)?;
                }
                println!("{r}");
            }
            Ok(0)
        }
        Command::Ps {
            all,
            quiet,
            no_trunc,
            format,
        } => ps(&ctx, all, quiet, no_trunc, format.as_deref()),
        Command::Stop { time, containers } => {
            for r in &containers {
                let c = ctx.container(r)?;
                stop(&c, time)?;
                println!("{r}");
            }
            Ok(0)
        }
        Command::Kill { signal, containers } => {
            let sig = parse_signal(&signal)?;
            for r in &containers {
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
        Command::Restart { time, containers } => {
            for r in &containers {
                let c = ctx.container(r)?;
                stop(&c, time)?;
                start_detached(&ctx, &c)?;
                println!("{r}");
            }
            Ok(0)
        }
        Command::Rm { force, containers } => {
            let mut failed = None;
            for r in &containers {
                match ctx.container(r).and_then(|c| remove(&ctx, &c, force)) {
                    Ok(()) => println!("{r}"),
                    Err(e) => {
                        eprintln!("Error: {e:#}");
                        failed = Some(EXIT_RUNTIME);
                    }
                }
            }
            Ok(failed.unwrap_or(0))
        }
        Command::Logs { follow, container } => logs(&ctx, &container, follow),
        Command::Exec(a) => exec(&ctx, &a),
        Command::Attach { container } => attach_logs(&ctx, &container),
        Command::Completion { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "strata", &mut std::io::stdout());
            Ok(0)
        }
        Command::Diff { container } => {
            let c = ctx.container(&container)?;
            let lowers = ctx.store.lower_dirs(&c.config.image_id.to_string())?;
            let mut out = std::io::stdout().lock();
            for ch in crate::diff::changes(&c.paths.upper(), &lowers) {
                writeln!(out, "{} {}", ch.kind.letter(), ch.path)?;
            }
            Ok(0)
        }
        Command::Commit {
            message,
            author,
            change,
            pause,
            container,
            name,
        } => {
            let c = ctx.container(&container)?;
            let id = commit(&ctx, &c, message, author, &change, pause, name.as_deref())?;
            println!("{id}");
            Ok(0)
        }
        Command::Export { output, container } => {
            let c = ctx.container(&container)?;
            export(&ctx, &c, output.as_deref())?;
            Ok(0)
        }
        Command::Cp { src, dst } => cp(&ctx, &src, &dst),
        Command::Mount { container } => {
            let c = ctx.container(&container)?;
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
        Command::Umount { container } => {
            let c = ctx.container(&container)?;
            if c.running_init()?.is_some() {
                bail!(
                    "container {container} is running; its filesystem stays mounted until it stops"
                );
            }
            proc::unmount_all_under(&c.paths.dir);
            println!("{container}");
            Ok(0)
        }
        Command::Image(ImageCommand::Mount { image, dir }) => {
            let info = ctx.store.inspect(&image)?;
            let dir = match dir {
                Some(d) => d,
                None => ctx.root.join("image-mounts").join(info.id.hex()),
            };
            fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
            if !proc::is_mounted(&dir) {
                let lowers: Vec<PathBuf> =
                    info.layers.iter().rev().map(|l| l.path.clone()).collect();
                spawn_mount_daemon(&ctx.root, &lowers, None, &dir)?;
            }
            println!("{}", dir.canonicalize().unwrap_or(dir).display());
            Ok(0)
        }
        Command::Image(ImageCommand::Unmount { target }) => {
            let p = Path::new(&target);
            let dir = if p.is_dir() && proc::is_mounted(p) {
                p.to_path_buf()
            } else {
                let id = ctx.store.resolve(&target)?;
                ctx.root.join("image-mounts").join(id.hex())
            };
            if !proc::is_mounted(&dir) {
                bail!("{target} is not mounted");
            }
            strata_fs::unmount(&dir.canonicalize()?)
                .map_err(|e| anyhow!("unmount {}: {e}", dir.display()))?;
            if dir.starts_with(ctx.root.join("image-mounts")) {
                let _ = fs::remove_dir(&dir);
            }
            println!("{target}");
            Ok(0)
        }
        Command::System(SystemCommand::Df) => system_df(&ctx),
        Command::System(SystemCommand::Prune { force, all }) => system_prune(&ctx, force, all),
        Command::System(SystemCommand::Check { repair }) => system_check(&ctx, repair),
        Command::Supervise { detach, id } => Ok(supervisor::supervise(
            &ctx.root,
            &id,
            if detach {
                Mode::Detached
            } else {
                Mode::Attached
            },
        )),
        Command::ServeMount {
            lowers,
            upper,
            work,
            dir,
        } => {
            let up = upper.zip(work);
            Ok(supervisor::serve_mount(mounts::options(lowers, up), &dir))
        }
    }
}

fn parse_changes(v: &[String]) -> Result<Vec<ConfigChange>> {
    v.iter()
        .map(|c| c.parse::<ConfigChange>().map_err(anyhow::Error::from))
        .collect()
}

/// Parses `KILL`, `SIGKILL`, `9`.
pub fn parse_signal(s: &str) -> Result<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| anyhow!("invalid signal {s:?}"));
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse::<Signal>()
        .map_err(|_| anyhow!("invalid signal {s:?}"))
}

fn split_name(n: &str) -> (String, String) {
    match n.rfind(':') {
        Some(i) if !n[i..].contains('/') => (n[..i].to_string(), n[i + 1..].to_string()),
        _ => (n.to_string(), "latest".to_string()),
    }
}

fn images(ctx: &Ctx, a: &ImagesArgs) -> Result<i32> {
    let mut list = ctx.store.images()?;
    list.sort_by_key(|i| std::cmp::Reverse(i.created.as_deref().and_then(parse_rfc3339)));
    if a.quiet {
        for i in &list {
            println!(
                "{}",
                if a.no_trunc {
                    i.id.to_string()
                } else {
                    i.id.short()
                }
            );
        }
        return Ok(0);
    }
    let mut rows = Vec::new();
    for i in &list {
        let names = if i.names.is_empty() {
            vec![None]
        } else {
            i.names.iter().map(Some).collect()
        };
        for n in names {
            let (repo, tag) = match n {
                Some(n) => split_name(n),
                None => ("<none>".into(), "<none>".into()),
            };
            let created = i.created.as_deref().and_then(parse_rfc3339);
            rows.push(json!({
                "Repository": repo,
                "Tag": tag,
                "ID": if a.no_trunc { i.id.to_string() } else { i.id.short() },
                "Id": i.id.hex(),
                "Names": i.names,
                "Created": created,
                "CreatedAt": i.created,
                "CreatedSince": ago(created),
                "Size": i.size,
                "Layers": i.layer_count,
            }));
        }
    }
    match a.format.as_deref() {
        Some("json") => println!("{}", serde_json::to_string_pretty(&rows)?),
        Some(tpl) => {
            for r in &rows {
                println!("{}", format::go_template(tpl, r));
            }
        }
        None => {
            let mut t = Table::new(&["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]);
            for r in &rows {
                t.row(vec![
                    r["Repository"].as_str().unwrap_or("").into(),
                    r["Tag"].as_str().unwrap_or("").into(),
                    r["ID"].as_str().unwrap_or("").into(),
                    r["CreatedSince"].as_str().unwrap_or("").into(),
                    human_size(r["Size"].as_u64().unwrap_or(0)),
                ]);
            }
            print!("{}", t.render());
        }
    }
    Ok(0)
}

fn save(ctx: &Ctx, a: &crate::cli::SaveArgs) -> Result<i32> {
    let refs: Vec<&str> = a.images.iter().map(String::as_str).collect();
    let format = match a.format.as_str() {
        "docker-archive" => SaveFormat::DockerArchive,
        "oci-archive" => SaveFormat::OciArchive(Compression::None),
        "oci-dir" => {
            let dir = a
                .output
                .as_ref()
                .ok_or_else(|| anyhow!("--format oci-dir needs -o DIR"))?;
            ctx.store.save_oci_dir(&refs, dir, Compression::None)?;
            return Ok(0);
        }
        other => bail!("unknown format {other:?}: use docker-archive, oci-archive or oci-dir"),
    };
    match &a.output {
        Some(p) => {
            let tmp = p.with_file_name(format!(
                ".{}.strata-tmp",
                p.file_name().and_then(|n| n.to_str()).unwrap_or("out")
            ));
            let r = (|| -> Result<()> {
                let f =
                    fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
                let mut w = std::io::BufWriter::new(f);
                ctx.store.save(&refs, format, &mut w)?;
                let f = w.into_inner().map_err(|e| e.into_error())?;
                f.sync_all()?;
                fs::rename(&tmp, p).with_context(|| format!("rename to {}", p.display()))?;
                Ok(())
            })();
            if r.is_err() {
                let _ = fs::remove_file(&tmp);
            }
            r?;
        }
        None => {
            if sys::is_tty(std::io::stdout()) {
                bail!("refusing to write an archive to a terminal; use -o FILE or redirect stdout");
            }
            let mut out = std::io::stdout().lock();
            ctx.store.save(&refs, format, &mut out)?;
            out.flush()?;
        }
    }
    Ok(0)
}

fn rmi(ctx: &Ctx, images: &[String], force: bool) -> Result<i32> {
    let mut code = 0;
    for i in images {
        match ctx.store.remove(i, force) {
            Ok(rs) => {
                for r in rs {
                    match r {
                        Removed::Untagged(t) => println!("Untagged: {t}"),
                        Removed::Deleted(id) => println!("Deleted: {id}"),
                        Removed::LayerDeleted(_) => {}
                    }
                }
            }
            Err(e) => {
                eprintln!("Error: {e}");
                code = EXIT_RUNTIME;
            }
        }
    }
    Ok(code)
}

fn trunc(s: &str, n: usize, no_trunc: bool) -> String {
    if no_trunc || s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

fn history(ctx: &Ctx, image: &str, no_trunc: bool, quiet: bool) -> Result<i32> {
    let id = ctx.store.resolve(image)?;
    let h = ctx.store.history(image)?;
    let mut t = Table::new(&["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"]);
    for (i, e) in h.iter().enumerate() {
        let img = if i == 0 {
            if no_trunc {
                id.to_string()
            } else {
                id.short()
            }
        } else {
            "<missing>".into()
        };
        if quiet {
            println!("{img}");
            continue;
        }
        t.row(vec![
            img,
            ago(e.created.as_deref().and_then(parse_rfc3339)),
            trunc(e.created_by.as_deref().unwrap_or(""), 45, no_trunc),
            human_size(e.size),
            e.comment.clone().unwrap_or_default(),
        ]);
    }
    if !quiet {
        print!("{}", t.render());
    }
    Ok(0)
}

fn image_json(ctx: &Ctx, r: &str) -> Result<Value> {
    let info = ctx.store.inspect(r)?;
    let cfg: Value = serde_json::from_slice(&info.config_bytes).unwrap_or(Value::Null);
    let lowers: Vec<String> = info
        .layers
        .iter()
        .rev()
        .map(|l| l.path.display().to_string())
        .collect();
    Ok(json!({
        "Id": info.id.to_string(),
        "RepoTags": info.names,
        "Created": cfg.get("created"),
        "Author": cfg.get("author"),
        "Architecture": cfg.get("architecture"),
        "Os": cfg.get("os"),
        "Config": cfg.get("config"),
        "Size": info.size,
        "RootFS": {"Type": "layers", "Layers": info.layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>()},
        "GraphDriver": {"Name": "strata", "Data": {"LowerDir": lowers.join(":")}},
        "History": cfg.get("history"),
        "Containers": info.users,
    }))
}

fn container_json(ctx: &Ctx, c: &Container) -> Result<Value> {
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
            "NetworkMode": match cfg.network { crate::container::Network::Host => "host", crate::container::Network::None => "none" },
            "Binds": cfg.volumes.iter().map(|v| format!("{}:{}{}", v.host.display(), v.target, if v.read_only { ":ro" } else { "" })).collect::<Vec<_>>(),
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

fn inspect(ctx: &Ctx, names: &[String], kind: Option<&str>, fmt: Option<&str>) -> Result<i32> {
    let mut out = Vec::new();
    for n in names {
        let v = match kind {
            Some("container") => container_json(ctx, &ctx.container(n)?)?,
            Some("image") => image_json(ctx, n)?,
            Some(k) => bail!("unknown --type {k:?}: use container or image"),
            None => match ctx.reg.find(n) {
                Ok(c) => container_json(ctx, &c)?,
                Err(crate::container::Error::NotFound(_)) => {
                    image_json(ctx, n).map_err(|_| anyhow!("no such object: {n}"))?
                }
                Err(e) => return Err(e.into()),
            },
        };
        out.push(v);
    }
    match fmt {
        None | Some("json") => println!("{}", serde_json::to_string_pretty(&out)?),
        Some(tpl) => {
            for v in &out {
                println!("{}", format::go_template(tpl, v));
            }
        }
    }
    Ok(0)
}

fn run_flags(a: &RunArgs) -> RunFlags {
    RunFlags {
        name: a.name.clone(),
        env: a.env.clone(),
        env_files: a.env_file.clone(),
        workdir: a.workdir.clone(),
        user: a.user.clone(),
        hostname: a.hostname.clone(),
        entrypoint: a.entrypoint.clone(),
        volumes: a.volume.clone(),
        network: a.network.clone(),
        tty: a.tty,
        interactive: a.interactive,
        auto_remove: a.rm,
    }
}

/// `create`: a container directory, its init layer, and a user mark on its
/// image (so `rmi` refuses while it exists).
pub fn create(ctx: &Ctx, a: &RunArgs) -> Result<Container> {
    let (image_ref, cmd) = a
        .args
        .split_first()
        .ok_or_else(|| anyhow!("no image given"))?;
    let info = ctx.store.inspect(image_ref)?;
    let id = ContainerId::generate();
    let config = spec::build(id, image_ref, &info, cmd, &run_flags(a))?;
    let lowers: Vec<PathBuf> = info.layers.iter().rev().map(|l| l.path.clone()).collect();
    let c = ctx.reg.create(config, |paths, cfg| {
        crate::rootfs::prepare_init_layer(paths, cfg, &lowers).map_err(|source| {
            crate::container::Error::Io {
                op: "prepare the init layer in",
                path: paths.dir.clone(),
                source,
            }
        })
    })?;
    if let Err(e) = ctx.store.add_image_user(&info.id, c.id().as_str()) {
        let _ = ctx.reg.delete(&c);
        return Err(e.into());
    }
    Ok(c)
}

fn run(ctx: &Ctx, a: &RunArgs) -> Result<i32> {
    let c = create(ctx, a)?;
    if a.detach {
        start_detached(ctx, &c)?;
        println!("{}", c.id());
        Ok(0)
    } else {
        start_attached(ctx, &c, a.interactive)
    }
}

fn supervisor_command(ctx: &Ctx, c: &Container, detach: bool) -> Result<Proc> {
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
fn read_report(child: &mut std::process::Child) -> Result<()> {
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

fn status_text(s: &State) -> String {
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

fn ps(ctx: &Ctx, all: bool, quiet: bool, no_trunc: bool, fmt: Option<&str>) -> Result<i32> {
    let mut rows = Vec::new();
    let mut list = ctx.reg.list()?;
    list.reverse();
    for c in &list {
        let s = c.state()?;
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
                    g("Names"),
                ]);
            }
            print!("{}", t.render());
        }
    }
    Ok(0)
}

/// Waits (bounded) until the container's supervisor is gone.
fn wait_stopped(c: &Container, limit: Duration) -> bool {
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
    proc::unmount_all_under(&c.paths.dir);
    ctx.reg.delete(c)?;
    ctx.store
        .remove_image_user(&c.config.image_id, c.id().as_str())?;
    Ok(())
}

fn logs(ctx: &Ctx, r: &str, follow: bool) -> Result<i32> {
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
fn attach_logs(ctx: &Ctx, r: &str) -> Result<i32> {
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

fn exec(ctx: &Ctx, a: &ExecArgs) -> Result<i32> {
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
fn exec_grandchild(
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
fn exec_child(
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

fn pause_all(init: &ProcId, sig: Signal) {
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
pub fn commit(
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

/// A view of a container's merged filesystem: the live mount when it
/// runs (or is mounted), else a mount served by this process for the life
/// of the guard.
struct View {
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

fn view(ctx: &Ctx, c: &Container, writable: bool) -> Result<View> {
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

fn export(ctx: &Ctx, c: &Container, output: Option<&Path>) -> Result<()> {
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

/// A path inside a container view, refusing paths whose symlinks lead out
/// of it.
fn container_path(root: &Path, p: &str, must_exist: bool) -> Result<PathBuf> {
    let joined = crate::rootfs::in_root(root, p);
    let check = if must_exist {
        joined.clone()
    } else {
        joined
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or(joined.clone())
    };
    let canon = check
        .canonicalize()
        .with_context(|| format!("{p}: no such file or directory in the container"))?;
    if !canon.starts_with(root) {
        bail!("{p} leads outside the container (a symbolic link); give the resolved path");
    }
    Ok(if must_exist {
        canon
    } else {
        canon.join(joined.file_name().unwrap_or_default())
    })
}

fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let m = fs::symlink_metadata(src).with_context(|| format!("stat {}", src.display()))?;
    if m.is_dir() {
        fs::create_dir_all(dst).with_context(|| format!("mkdir {}", dst.display()))?;
        fs::set_permissions(dst, m.permissions())?;
        for e in fs::read_dir(src)? {
            let e = e?;
            copy_tree(&e.path(), &dst.join(e.file_name()))?;
        }
    } else if m.file_type().is_symlink() {
        let t = fs::read_link(src)?;
        let _ = fs::remove_file(dst);
        std::os::unix::fs::symlink(t, dst)?;
    } else {
        fs::copy(src, dst)
            .with_context(|| format!("copy {} to {}", src.display(), dst.display()))?;
    }
    Ok(())
}

fn cp(ctx: &Ctx, src: &str, dst: &str) -> Result<i32> {
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
            let from = container_path(&v.path, &cpath, true)?;
            let mut to = PathBuf::from(dst);
            if to.is_dir() {
                to = to.join(from.file_name().unwrap_or_default());
            }
            copy_tree(&from, &to)?;
        }
        (None, Some((cref, cpath))) => {
            let c = ctx.container(&cref)?;
            let v = view(ctx, &c, true)?;
            let from = PathBuf::from(src);
            let mut to = container_path(&v.path, &cpath, false)?;
            if to.is_dir() {
                to = to.join(from.file_name().unwrap_or_default());
            }
            copy_tree(&from, &to)?;
        }
        _ => {
            bail!("copy between a container and the host: one of the paths must be CONTAINER:PATH")
        }
    }
    Ok(0)
}

fn spawn_mount_daemon(
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

fn du(p: &Path) -> u64 {
    let Ok(m) = fs::symlink_metadata(p) else {
        return 0;
    };
    if m.is_dir() {
        fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| du(&e.path())).sum())
            .unwrap_or(0)
    } else {
        m.len()
    }
}

fn system_df(ctx: &Ctx) -> Result<i32> {
    let images = ctx.store.images()?;
    let containers = ctx.reg.list()?;
    let used: std::collections::BTreeSet<_> =
        containers.iter().map(|c| c.config.image_id).collect();
    let img_size: u64 = images.iter().map(|i| i.size).sum();
    let img_unused: u64 = images
        .iter()
        .filter(|i| !used.contains(&i.id))
        .map(|i| i.size)
        .sum();
    let mut running = 0;
    let mut ctr_size = 0;
    let mut ctr_reclaim = 0;
    for c in &containers {
        let sz = du(&c.paths.upper());
        ctr_size += sz;
        if c.running_init()?.is_some() {
            running += 1;
        } else {
            ctr_reclaim += sz;
        }
    }
    let mut t = Table::new(&["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]);
    t.row(vec![
        "Images".into(),
        images.len().to_string(),
        used.len().to_string(),
        human_size(img_size),
        human_size(img_unused),
    ]);
    t.row(vec![
        "Containers".into(),
        containers.len().to_string(),
        running.to_string(),
        human_size(ctr_size),
        human_size(ctr_reclaim),
    ]);
    print!("{}", t.render());
    Ok(0)
}

fn system_prune(ctx: &Ctx, force: bool, all: bool) -> Result<i32> {
    if !force {
        eprint!(
            "WARNING! This will remove all stopped containers and {} images.\nAre you sure you want to continue? [y/N] ",
            if all { "all unused" } else { "dangling" }
        );
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !answer.trim().eq_ignore_ascii_case("y") {
            return Ok(0);
        }
    }
    let mut reclaimed = 0u64;
    println!("Deleted Containers:");
    for c in ctx.reg.list()? {
        if c.running_init()?.is_some() {
            continue;
        }
        let sz = du(&c.paths.upper());
        remove(ctx, &c, false)?;
        reclaimed += sz;
        println!("{}", c.id());
    }
    println!("Deleted Images:");
    let used: std::collections::BTreeSet<_> =
        ctx.reg.list()?.iter().map(|c| c.config.image_id).collect();
    for i in ctx.store.images()? {
        if used.contains(&i.id) || (!all && !i.names.is_empty()) {
            continue;
        }
        if let Ok(rs) = ctx.store.remove(&i.id.to_string(), true) {
            for r in rs {
                match r {
                    Removed::Untagged(t) => println!("untagged: {t}"),
                    Removed::Deleted(id) => {
                        reclaimed += i.size;
                        println!("deleted: {id}");
                    }
                    Removed::LayerDeleted(_) => {}
                }
            }
        }
    }
    println!("Total reclaimed space: {}", human_size(reclaimed));
    Ok(0)
}

fn system_check(ctx: &Ctx, repair: bool) -> Result<i32> {
    let report = ctx.store.check(repair)?;
    let mut problems = 0;
    for p in &report.problems {
        let fixed = report.repaired.contains(p);
        println!("{}{p}", if fixed { "repaired: " } else { "" });
        if !fixed {
            problems += 1;
        }
    }
    let _l = ctx.reg.lock()?;
    for d in ctx.reg.debris() {
        if repair {
            proc::unmount_all_under(&d);
            let _ = fs::remove_dir_all(&d);
            println!("repaired: leftover container data {}", d.display());
        } else {
            println!("leftover container data {}", d.display());
            problems += 1;
        }
    }
    for d in ctx.reg.damaged() {
        println!(
            "container directory {} is damaged; remove it by hand",
            d.display()
        );
        problems += 1;
    }
    drop(_l);
    // Mounts under containers whose supervisor is gone.
    for c in ctx.reg.list()? {
        let s = c.state()?;
        let serving = s.supervisor.is_some_and(|p| p.is_alive());
        let mounts = proc::mounts_under(&c.paths.dir);
        if serving || mounts.is_empty() {
            continue;
        }
        // A live `strata mount` daemon answers; a dead server does not.
        let dead: Vec<_> = mounts
            .into_iter()
            .filter(|m| fs::read_dir(m).is_err())
            .collect();
        for m in dead {
            if repair {
                let _ = strata_fs::unmount(&m);
                println!("repaired: orphaned mount {}", m.display());
            } else {
                println!("orphaned mount {} (its server is gone)", m.display());
                problems += 1;
            }
        }
    }
    println!(
        "checked {} layers, {} images, {} containers: {}",
        report.layers_checked,
        report.images_checked,
        ctx.reg.list()?.len(),
        if problems == 0 {
            "ok".to_string()
        } else {
            format!("{problems} problems")
        }
    );
    Ok(if problems == 0 { 0 } else { 1 })
}
