//! One function per `strata` command, by area: [`images`], [`lifecycle`]
//! (create, start, stop, rm, ps, logs), [`exec`], [`files`] (commit,
//! export, cp, mounts), [`system`]. They print what docker and podman
//! print, and return the process exit code; errors carry the code they
//! should exit with ([`Exit`], else 125).

mod exec;
mod files;
mod images;
mod lifecycle;
mod registry;
mod stats;
mod system;

use exec::*;
use files::*;
use images::*;
use lifecycle::*;
use registry::*;
use stats::*;
use system::*;

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
use crate::sys;

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
        Command::Port {
            container,
            port: which,
        } => port(&ctx, &container, which.as_deref()),
        Command::Ps {
            all,
            quiet,
            no_trunc,
            format,
        } => ps(&ctx, all, quiet, no_trunc, format.as_deref()),
        Command::Stats {
            all,
            no_stream,
            containers,
        } => stats(&ctx, &containers, all, no_stream),
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
            let changes = crate::diff::changes(&c.paths.upper(), &lowers)
                .with_context(|| format!("cannot read the changes of {}", c.config.name))?;
            for ch in changes {
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
        Command::Build(a) => build(&ctx, &a),
        Command::Pull(a) => pull(&ctx, &a),
        Command::Push(a) => push(&ctx, &a),
        Command::Login(a) => login(&a),
        Command::Logout { registry } => logout(&registry),
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
            // `image mount` and `mount` are for the host's eyes: an
            // image's setuid programs and device nodes mean nothing there.
            let opts = strata_fs::MountOptions {
                nosuid: true,
                nodev: true,
                ..mounts::options(lowers, up)
            };
            Ok(supervisor::serve_mount(opts, &dir))
        }
    }
}

/// `build`: the build module does the work; a failed RUN exits with its
/// code.
fn build(ctx: &Ctx, a: &crate::cli::BuildArgs) -> Result<i32> {
    use crate::build::{BuildError, BuildOptions, Builder};
    let opts = BuildOptions {
        context: a.context.clone(),
        file: a.file.clone(),
        tags: a.tag.clone(),
        build_args: a.build_arg.clone(),
        target: a.target.clone(),
        no_cache: a.no_cache,
        quiet: a.quiet,
        network: a.network.clone(),
    };
    let what = match &a.file {
        Some(f) if f.as_os_str() == "-" => "the Containerfile on stdin".to_string(),
        Some(f) => f.display().to_string(),
        None => "the Containerfile".to_string(),
    };
    let r = Builder::new(&ctx.store, &ctx.reg, &ctx.root, &opts).and_then(Builder::build);
    let r = match r {
        Ok(r) => r,
        Err(BuildError::RunFailed { line, text, code }) => {
            return Err(Exit {
                code,
                message: format!(
                    "building {what}: line {line}: {text}: the command exited with code {code}"
                ),
            }
            .into())
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("building {what}"))),
    };
    if let Some(f) = &a.iidfile {
        fs::write(f, r.id.to_string()).with_context(|| format!("write {}", f.display()))?;
    }
    println!("{}", r.id);
    Ok(0)
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
