//! RUN: a container of the current image runs the command on the FUSE
//! rootfs (through the same supervisor as `strata run`), and its upper
//! directory becomes the step's layer, exactly as `strata commit` makes
//! one. The container is removed on every path ([`Intermediate`]).

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;
use strata_layerdb::{CommitMeta, ImageId, Store};

use super::parse::{CmdForm, Step};
use super::{json_list, sha, BuildError, Builder, StageState};

use crate::container::{Container, Registry};
use crate::ids::ContainerId;
use crate::spec::{self, RunFlags};

/// RUN as a step of [`Builder`].
impl Builder<'_> {
    /// RUN: the command in a container of the stage's image, with the build
    /// args in effect that the environment does not set; the layer from the
    /// cache when the command, args, environment and config are the same.
    pub(super) fn run_step(
        &mut self,
        st: &mut StageState,
        step: &Step,
        c: &CmdForm,
    ) -> Result<(), BuildError> {
        let err = |msg: String| Builder::step_error(step, msg);
        let argv = match c {
            CmdForm::Exec(v) => v.clone(),
            CmdForm::Shell(s) => {
                let mut v = st.shell();
                v.push(s.clone());
                v
            }
        };
        if argv.is_empty() {
            return Err(err("RUN needs a command".into()));
        }
        let Some(image) = st.image else {
            return Err(err(
                "cannot RUN in an empty image (FROM scratch): there is no shell".into(),
            ));
        };
        let env = st.env();
        let args: Vec<String> = st
            .args
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
            .filter(|kv| {
                let k = kv.split('=').next().unwrap_or("");
                !env.iter().any(|e| e.split('=').next() == Some(k))
            })
            .collect();
        let (_, parent_key) = Builder::parent(st);
        let created_by = argv.join(" ");
        let cfg_json = Value::Object(st.config.clone()).to_string();
        let key = sha(&[
            "run",
            &parent_key,
            &json_list(&argv),
            &json_list(&args),
            &json_list(&env),
            &cfg_json,
        ]);
        if let Some(id) = self.cached(st, &key) {
            return self.advance(st, id);
        }
        let id = run_step(
            self.store,
            self.reg,
            self.root,
            &RunStep {
                image,
                argv,
                args,
                network: self.opts.network.clone(),
                quiet: self.opts.quiet,
                created_by,
                config: Value::Object(st.config.clone()),
            },
        )
        .map_err(|e| match e {
            RunError::Exit(code) => BuildError::RunFailed {
                line: step.line,
                text: step.text.clone(),
                code,
            },
            RunError::Store(s) => BuildError::Store(s),
            other => err(other.to_string()),
        })?;
        self.made(st, &key, id)
    }
}

/// One RUN to do.
pub struct RunStep {
    /// The image it runs in.
    pub image: ImageId,
    /// The command (SHELL + text, or the exec form).
    pub argv: Vec<String>,
    /// Build args in effect, as `K=V`, added to the environment.
    pub args: Vec<String>,
    /// `--network`.
    pub network: Option<String>,
    /// Hide the command's output.
    pub quiet: bool,
    /// The history text.
    pub created_by: String,
    /// The runtime config of the image it makes.
    pub config: serde_json::Value,
}

/// How a RUN failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The command exited with this code.
    #[error("the command exited with code {0}")]
    Exit(i32),
    /// The step's container config could not be made.
    #[error("{0}")]
    Spec(#[from] spec::SpecError),
    /// The step's container could not be created.
    #[error("{0}")]
    Container(#[from] crate::container::Error),
    /// `/proc/self/exe` could not be read.
    #[error("cannot find the strata executable: {0}")]
    Exe(std::io::Error),
    /// The supervisor could not be started.
    #[error("cannot start the supervisor: {0}")]
    Supervisor(std::io::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] strata_layerdb::Error),
}

/// The container of one step; removed (unmounted, deleted, released from
/// its image) on drop.
struct Intermediate<'a> {
    store: &'a Store,
    reg: &'a Registry,
    c: Container,
}

impl Drop for Intermediate<'_> {
    fn drop(&mut self) {
        crate::proc::unmount_all_under(&self.c.paths.dir);
        let _ = self.reg.delete(&self.c);
        let _ = self
            .store
            .remove_image_user(&self.c.config.image_id, self.c.id().as_str());
    }
}

/// The signals the attach loop handles, blocked while a step runs.
struct SignalsBlocked;

impl SignalsBlocked {
    fn new() -> SignalsBlocked {
        crate::attach::block_signals();
        SignalsBlocked
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        crate::attach::unblock_all_signals();
    }
}

/// Runs the step; returns the image with its layer.
pub fn run_step(
    store: &Store,
    reg: &Registry,
    root: &Path,
    step: &RunStep,
) -> Result<ImageId, RunError> {
    let image_ref = step.image.to_string();
    let info = store.inspect(&image_ref).map_err(RunError::Store)?;
    let id = ContainerId::generate();
    let flags = RunFlags {
        env: step.args.clone(),
        network: step.network.clone(),
        entrypoint: Some(String::new()),
        ..Default::default()
    };
    let config = spec::build(id, &image_ref, &info, &step.argv, &flags)?;
    let lowers: Vec<_> = info.layers.iter().rev().map(|l| l.path.clone()).collect();
    let c = reg.create(config, |paths, cfg| {
        crate::rootfs::prepare_init_layer(paths, cfg, &lowers).map_err(|err| {
            crate::container::Error::Io {
                op: "prepare the init layer in",
                path: paths.dir.clone(),
                err,
            }
        })
    })?;
    // Declared before the container's guard, so signals are unblocked
    // only after the container is gone: a Ctrl-C that arrives between
    // steps ends the build at a clean point.
    let _signals = SignalsBlocked::new();
    let guard = Intermediate { store, reg, c };
    store
        .add_image_user(&info.id, guard.c.id().as_str())
        .map_err(RunError::Store)?;
    let exe = std::env::current_exe().map_err(RunError::Exe)?;
    let mut cmd = Command::new(exe);
    cmd.arg("--root")
        .arg(root)
        .arg("__supervise")
        .arg(guard.c.id().as_str())
        .stdin(Stdio::null());
    if step.quiet {
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
    }
    // As `strata run` does: Ctrl-C and SIGTERM go to the step's command,
    // so an interrupted build still removes its container.
    let child = cmd.spawn();
    let code = match child {
        Ok(child) => {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let c = &guard.c;
            let attach = crate::attach::Attach {
                master: None,
                forward_stdin: false,
            };
            crate::attach::run(pid, attach, &|| c.running_init().ok().flatten())
        }
        Err(e) => return Err(RunError::Supervisor(e)),
    };
    if code != 0 {
        return Err(RunError::Exit(code));
    }
    store
        .commit(
            Some(&image_ref),
            &guard.c.paths.upper(),
            &CommitMeta {
                created_by: Some(step.created_by.clone()),
                config: Some(step.config.clone()),
                ..Default::default()
            },
            None,
        )
        .map_err(RunError::Store)
}
