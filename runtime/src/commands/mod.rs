//! One function per `strata` command, by area: [`images`], [`lifecycle`]
//! (create, start, stop, rm, ps, logs), [`exec`], [`files`] (commit,
//! export, cp, mounts), [`system`]. They print what docker and podman
//! print, and return the process exit code; errors carry the code they
//! should exit with ([`Exit`], else 125).

mod build;
mod exec;
mod files;
mod images;
mod inspect;
mod internal;
mod lifecycle;
mod registry;
mod stats;
mod system;

use std::path::PathBuf;

use anyhow::{Context, Result};
use strata_layerdb::{ConfigChange, Store};

use crate::cli::{Cli, Command, ImageCommand, SystemCommand};
use crate::container::{Container, Registry};
use crate::process::EXIT_RUNTIME;

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
    fn open(root: PathBuf) -> Result<Ctx> {
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

/// Runs a parsed command line: one line per command, the work in the
/// module that owns it.
pub fn dispatch(cli: Cli) -> Result<i32> {
    // Before anything starts a thread: an ordinary user's commands run in
    // the user's rootless namespace, on the user's store.
    let rootless = match &cli.command {
        Command::Completion { .. } | Command::Login(_) | Command::Logout { .. } => None,
        _ if !nix::unistd::geteuid().is_root() => Some(crate::rootless::enter()?),
        _ => None,
    };
    if let Command::Unshare { command } = &cli.command {
        // strata run in there is root and would use /var/lib/strata.
        let store = rootless.map(|d| d.store);
        return unshare(command, store.as_deref());
    }
    // --root, else $STRATA_ROOT, else the user's store or /var/lib/strata.
    let root = match (cli.root, rootless) {
        (None, Some(dirs)) if std::env::var_os("STRATA_ROOT").is_none_or(|v| v.is_empty()) => {
            dirs.store
        }
        (explicit, _) => Store::default_root(explicit.as_deref()),
    };
    let ctx = Ctx::open(root)?;
    match cli.command {
        Command::Images(a) | Command::Image(ImageCommand::Ls(a)) => images::images(&ctx, &a),
        Command::Import(a) => images::import(&ctx, &a),
        Command::Load(a) => images::load(&ctx, &a),
        Command::Save(a) => images::save(&ctx, &a),
        Command::Tag { source, target } => images::tag(&ctx, &source, &target),
        Command::Rmi { force, images } => images::rmi(&ctx, &images, force),
        Command::History(a) => images::history(&ctx, &a),
        Command::Inspect(a) => inspect::inspect(&ctx, &a),
        Command::Create(a) => lifecycle::create(&ctx, &a),
        Command::Run(a) => lifecycle::run(&ctx, &a),
        Command::Start(a) => lifecycle::start(&ctx, &a),
        Command::Port { container, port } => lifecycle::port(&ctx, &container, port.as_deref()),
        Command::Ps(a) => lifecycle::ps(&ctx, &a),
        Command::Stats(a) => stats::stats(&ctx, &a),
        Command::Stop { time, containers } => lifecycle::stop_all(&ctx, time, &containers),
        Command::Kill { signal, containers } => lifecycle::kill_all(&ctx, &signal, &containers),
        Command::Restart { time, containers } => lifecycle::restart_all(&ctx, time, &containers),
        Command::Rm { force, containers } => lifecycle::remove_all(&ctx, force, &containers),
        Command::Logs { follow, container } => lifecycle::logs(&ctx, &container, follow),
        Command::Exec(a) => exec::exec(&ctx, &a),
        Command::Attach { container } => lifecycle::attach_logs(&ctx, &container),
        Command::Completion { shell } => completion(shell),
        Command::Unshare { command } => unshare(&command, None),
        Command::Diff { container } => files::diff(&ctx, &container),
        Command::Commit(a) => files::commit_cmd(&ctx, &a),
        Command::Export { output, container } => files::export_cmd(&ctx, &container, &output),
        Command::Cp { src, dst } => files::cp(&ctx, &src, &dst),
        Command::Mount { container } => files::mount(&ctx, &container),
        Command::Umount { container } => files::umount(&ctx, &container),
        Command::Build(a) => build::build(&ctx, &a),
        Command::Pull(a) => registry::pull(&ctx, &a),
        Command::Push(a) => registry::push(&ctx, &a),
        Command::Login(a) => registry::login(&a),
        Command::Logout { registry } => registry::logout(&registry),
        Command::Image(ImageCommand::Mount { image, dir }) => images::mount(&ctx, &image, dir),
        Command::Image(ImageCommand::Unmount { target }) => images::unmount(&ctx, &target),
        Command::Image(ImageCommand::Rm { force, images }) => images::rmi(&ctx, &images, force),
        Command::System(SystemCommand::Df) => system::system_df(&ctx),
        Command::System(SystemCommand::Prune { force, all }) => {
            system::system_prune(&ctx, force, all)
        }
        Command::System(SystemCommand::Check { repair }) => system::system_check(&ctx, repair),
        Command::Supervise(a) => internal::supervise(&ctx, &a),
        Command::ServeMount(a) => internal::serve_mount(a),
    }
}

/// `unshare`: runs a command (default `$SHELL`) where this process is, in
/// the rootless namespace for an ordinary user (with `STRATA_ROOT` set to
/// the user's store, so `strata` in there uses it); its exit code.
fn unshare(command: &[String], store: Option<&std::path::Path>) -> Result<i32> {
    let (prog, args) = match command.split_first() {
        Some((p, a)) => (p.clone(), a.to_vec()),
        None => (
            std::env::var("SHELL").unwrap_or_else(|_| "/bin/sh".into()),
            Vec::new(),
        ),
    };
    let mut cmd = std::process::Command::new(&prog);
    cmd.args(&args);
    if let (Some(store), None) = (store, std::env::var_os("STRATA_ROOT")) {
        cmd.env("STRATA_ROOT", store);
    }
    let status = cmd.status().map_err(|e| Exit {
        code: if e.kind() == std::io::ErrorKind::NotFound {
            127
        } else {
            126
        },
        message: format!("cannot run {prog}: {e}"),
    })?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// `completion`: the shell completion script of this command line.
fn completion(shell: clap_complete::Shell) -> Result<i32> {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "strata", &mut std::io::stdout());
    Ok(0)
}

fn parse_changes(v: &[String]) -> Result<Vec<ConfigChange>> {
    v.iter()
        .map(|c| c.parse::<ConfigChange>().map_err(anyhow::Error::from))
        .collect()
}
