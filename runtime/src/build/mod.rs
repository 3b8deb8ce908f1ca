//! `strata build`: images from a Containerfile/Dockerfile, with a layer
//! cache in the store.
//!
//! Map: [`parse`] (the file → stages of steps, with the `parse-dockerfile`
//! crate) → [`Builder::build`] (which stages the target needs, each stage's
//! steps in order) → per step: a metadata change (`meta`: a new config,
//! no layer, [`strata_layerdb::Store::amend`]), a RUN (`run`: a container
//! on the FUSE rootfs whose upper directory becomes a layer, as `commit`
//! makes one) or a COPY/ADD (`copy_step`, on [`copy`]: a tar of the
//! sources streamed into [`strata_layerdb::Store::commit_tar`]). Each kind
//! of step is an `impl Builder` block in its module; `Builder::step` only
//! dispatches. [`expand`] does Docker's
//! variable expansion, [`ignore`] the `.dockerignore` rules and source
//! globs.
//!
//! The cache: a step's key is the SHA-256 of its parent image ID (which
//! covers the parent's config and so its chainID) and what the step does
//! (for RUN the command, the build args in effect and the environment;
//! for COPY/ADD the digest of the copied files' paths, modes, owners and
//! contents, not their mtimes). The table from keys to the images the
//! steps made lives in the store ([`strata_layerdb::buildcache`]). After
//! the first miss in a stage every later step of that stage runs.
//!
//! Invariants: nothing is tagged unless the whole build succeeded; every
//! intermediate container and temporary directory is removed on every
//! path (guards), so a failed build leaves no container and no mount.

pub mod copy;
mod copy_step;
pub mod expand;
pub mod ignore;
mod meta;
pub mod parse;
mod run;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};
use strata_layerdb::{Digest, ImageId, Store};

use crate::container::Registry;
use parse::{Containerfile, CopySpec, Instr, StageDef, Step};

/// Why a build failed. Every message names the line of the Containerfile
/// where it can.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The file does not parse.
    #[error("line {line}: {msg}")]
    Parse {
        /// 1-based line.
        line: usize,
        /// What was expected.
        msg: String,
    },
    /// A step cannot be done.
    #[error("line {line}: {text}: {msg}")]
    Step {
        /// 1-based line.
        line: usize,
        /// The instruction.
        text: String,
        /// Why.
        msg: String,
    },
    /// A RUN exited non-zero.
    #[error("line {line}: {text}: the command exited with code {code}")]
    RunFailed {
        /// 1-based line.
        line: usize,
        /// The instruction.
        text: String,
        /// Its exit code.
        code: i32,
    },
    /// The build cannot start (context, file, flags).
    #[error("{0}")]
    Setup(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] strata_layerdb::Error),
}

/// What `strata build` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// The context directory.
    pub context: PathBuf,
    /// The Containerfile (`-` for stdin); default `Containerfile` or
    /// `Dockerfile` in the context.
    pub file: Option<PathBuf>,
    /// Names to tag the result with.
    pub tags: Vec<String>,
    /// `--build-arg K=V` (or `K` to take the host's value).
    pub build_args: Vec<String>,
    /// `--target STAGE`.
    pub target: Option<String>,
    /// `--no-cache`.
    pub no_cache: bool,
    /// `-q`: print only the image ID.
    pub quiet: bool,
    /// `--network host|none` for RUN.
    pub network: Option<String>,
}

/// The state of the stage being built.
struct StageState {
    /// The current image (`None`: scratch, nothing yet).
    image: Option<ImageId>,
    /// Its runtime `config` object.
    config: Map<String, Value>,
    /// ARGs declared in this stage, with their values.
    args: BTreeMap<String, Option<String>>,
    /// Still taking steps from the cache.
    cached: bool,
    /// CMD was set in this stage (ENTRYPOINT then keeps it).
    cmd_set: bool,
    /// The stage's index.
    index: usize,
}

impl StageState {
    fn env(&self) -> Vec<String> {
        self.config
            .get("Env")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The value of a variable for expansion: ENV first, then ARG.
    fn var(&self, name: &str) -> Option<String> {
        let prefix = format!("{name}=");
        for e in self.env().iter().rev() {
            if let Some(v) = e.strip_prefix(&prefix) {
                return Some(v.to_string());
            }
        }
        self.args.get(name).cloned().flatten()
    }

    fn shell(&self) -> Vec<String> {
        self.config
            .get("Shell")
            .and_then(|v| serde_json::from_value::<Vec<String>>(v.clone()).ok())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()])
    }
}

/// A build of one Containerfile.
pub struct Builder<'a> {
    store: &'a Store,
    reg: &'a Registry,
    root: &'a Path,
    opts: &'a BuildOptions,
    cf: Containerfile,
    build_args: BTreeMap<String, String>,
    used_args: BTreeSet<String>,
    ignore: ignore::Ignore,
    /// Images of the stages built so far, by index.
    stage_images: BTreeMap<usize, Option<ImageId>>,
    out: Box<dyn Write>,
}

/// What the build printed as the result.
#[derive(Debug, Clone)]
pub struct BuildResult {
    /// The image.
    pub id: ImageId,
    /// The tags it was given.
    pub tags: Vec<String>,
}

fn sha(parts: &[&str]) -> Digest {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    Digest::from_bytes(h.finalize().into())
}

pub(super) fn nop(text: &str) -> String {
    format!("/bin/sh -c #(nop)  {text}")
}

pub(super) fn json_list(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

impl<'a> Builder<'a> {
    /// Reads the Containerfile and the ignore file; checks the context.
    pub fn new(
        store: &'a Store,
        reg: &'a Registry,
        root: &'a Path,
        opts: &'a BuildOptions,
    ) -> Result<Builder<'a>, BuildError> {
        let ctx = &opts.context;
        if !ctx.is_dir() {
            return Err(BuildError::Setup(format!(
                "the build context {} is not a directory",
                ctx.display()
            )));
        }
        let text = match &opts.file {
            Some(f) if f.as_os_str() == "-" => {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map_err(|e| {
                    BuildError::Setup(format!("cannot read the Containerfile from stdin: {e}"))
                })?;
                s
            }
            Some(f) => std::fs::read_to_string(f)
                .map_err(|e| BuildError::Setup(format!("cannot read {}: {e}", f.display())))?,
            None => {
                let found = ["Containerfile", "Dockerfile"]
                    .iter()
                    .map(|n| ctx.join(n))
                    .find(|p| p.is_file())
                    .ok_or_else(|| {
                        BuildError::Setup(format!(
                            "no Containerfile or Dockerfile in {}; name one with -f",
                            ctx.display()
                        ))
                    })?;
                std::fs::read_to_string(&found).map_err(|e| {
                    BuildError::Setup(format!("cannot read {}: {e}", found.display()))
                })?
            }
        };
        if let Some(n) = opts
            .network
            .as_deref()
            .filter(|n| !matches!(*n, "host" | "none"))
        {
            return Err(BuildError::Setup(format!(
                "--network {n}: RUN steps support host and none"
            )));
        }
        for t in &opts.tags {
            strata_layerdb::ImageName::parse(
                t,
                strata_layerdb::reference::DefaultDomain::Localhost,
            )
            .map_err(|e| BuildError::Setup(format!("-t {t}: {e}")))?;
        }
        let cf = parse::parse(&text)?;
        let ignore = [".containerignore", ".dockerignore"]
            .iter()
            .find_map(|n| std::fs::read_to_string(ctx.join(n)).ok())
            .map(|t| ignore::Ignore::parse(&t))
            .unwrap_or_default();
        let mut build_args = BTreeMap::new();
        for a in &opts.build_args {
            match a.split_once('=') {
                Some((k, v)) => {
                    build_args.insert(k.to_string(), v.to_string());
                }
                None => {
                    if let Ok(v) = std::env::var(a) {
                        build_args.insert(a.clone(), v);
                    }
                }
            }
        }
        let out: Box<dyn Write> = if opts.quiet {
            Box::new(std::io::sink())
        } else {
            Box::new(std::io::stdout())
        };
        Ok(Builder {
            store,
            reg,
            root,
            opts,
            cf,
            build_args,
            used_args: BTreeSet::new(),
            ignore,
            stage_images: BTreeMap::new(),
            out,
        })
    }

    fn say(&mut self, s: &str) {
        let _ = writeln!(self.out, "{s}");
        let _ = self.out.flush();
    }

    /// The global ARGs (before the first FROM) with their values.
    fn global_args(&mut self) -> Result<BTreeMap<String, Option<String>>, BuildError> {
        let mut m: BTreeMap<String, Option<String>> = BTreeMap::new();
        for (raw, line) in self.cf.global_args.clone() {
            for (k, v) in self.arg_decl(&raw, line, "ARG", &|n| m.get(n).cloned().flatten())? {
                m.insert(k, v);
            }
        }
        Ok(m)
    }

    /// `ARG A=1 B`: the names and their values (a `--build-arg` wins over
    /// the default).
    fn arg_decl(
        &mut self,
        raw: &str,
        line: usize,
        text: &str,
        vars: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vec<(String, Option<String>)>, BuildError> {
        let words = expand::words(raw, self.cf.escape, vars).map_err(|e| BuildError::Step {
            line,
            text: text.to_string(),
            msg: e.0,
        })?;
        let mut out = Vec::new();
        for w in words {
            let (k, default) = match w.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (w.clone(), None),
            };
            let v = match self.build_args.get(&k) {
                Some(v) => {
                    self.used_args.insert(k.clone());
                    Some(v.clone())
                }
                None => default,
            };
            out.push((k, v));
        }
        Ok(out)
    }

    /// Which stage a `FROM`/`--from` name means, if any.
    fn stage_index(&self, name: &str, before: usize) -> Option<usize> {
        let lower = name.to_lowercase();
        if let Ok(n) = name.parse::<usize>() {
            return (n < before).then_some(n);
        }
        self.cf.stages[..before]
            .iter()
            .find(|s| s.name.as_deref() == Some(lower.as_str()))
            .map(|s| s.index)
    }

    /// Runs the build; tags the result only when every step succeeded.
    pub fn build(mut self) -> Result<BuildResult, BuildError> {
        let started = Instant::now();
        let globals = self.global_args()?;
        let gvars = |n: &str| globals.get(n).cloned().flatten();
        // Expand FROM lines and find the dependencies of each stage.
        let mut bases = Vec::new();
        let mut deps: Vec<BTreeSet<usize>> = Vec::new();
        for s in &self.cf.stages {
            let base =
                expand::word(&s.base, self.cf.escape, &gvars).map_err(|e| BuildError::Step {
                    line: s.line,
                    text: s.text.clone(),
                    msg: e.0,
                })?;
            let mut d = BTreeSet::new();
            if let Some(i) = self.stage_index(&base, s.index) {
                d.insert(i);
            }
            for st in &s.steps {
                if let Instr::Copy(CopySpec { from: Some(f), .. }) = &st.instr {
                    if let Some(i) = self.stage_index(f, s.index) {
                        d.insert(i);
                    }
                }
            }
            bases.push(base);
            deps.push(d);
        }
        let target = match &self.opts.target {
            None => self.cf.stages.len() - 1,
            Some(t) => self
                .cf
                .stages
                .iter()
                .find(|s| s.name.as_deref() == Some(t.to_lowercase().as_str()))
                .map(|s| s.index)
                .ok_or_else(|| BuildError::Setup(format!("--target {t}: no stage is named {t}")))?,
        };
        let mut needed = BTreeSet::new();
        let mut todo = vec![target];
        while let Some(i) = todo.pop() {
            if needed.insert(i) {
                todo.extend(deps[i].iter().copied());
            }
        }
        let total = needed.len();
        for (n, &i) in needed.iter().enumerate() {
            let stage = self.cf.stages[i].clone();
            let prefix = if total > 1 {
                format!("[{}/{}] ", n + 1, total)
            } else {
                String::new()
            };
            let img = self.build_stage(&stage, &bases[i], &globals, &prefix)?;
            self.stage_images.insert(i, img);
        }
        let id = self.stage_images[&target].ok_or_else(|| {
            BuildError::Setup(
                "no image was made: the target stage is FROM scratch with no steps".into(),
            )
        })?;
        for (k, _) in self.build_args.clone() {
            let declared = self.used_args.contains(&k);
            if !declared {
                eprintln!("[Warning] one or more build-args [{k}] were not consumed");
            }
        }
        let mut tags = Vec::new();
        if !self.opts.tags.is_empty() {
            self.say(&format!("COMMIT {}", self.opts.tags.join(" ")));
        }
        for t in &self.opts.tags {
            let name = self.store.tag(&id.to_string(), t)?;
            tags.push(name.to_string());
        }
        self.store.cache_mark_result(&id)?;
        self.say(&format!("--> {}", id.short()));
        for t in &tags {
            self.say(&format!("Successfully tagged {t}"));
        }
        tracing::debug!(elapsed = ?started.elapsed(), "build done");
        Ok(BuildResult { id, tags })
    }

    fn build_stage(
        &mut self,
        stage: &StageDef,
        base: &str,
        globals: &BTreeMap<String, Option<String>>,
        prefix: &str,
    ) -> Result<Option<ImageId>, BuildError> {
        let nsteps = stage.steps.len() + 1;
        self.say(&format!("{prefix}STEP 1/{nsteps}: {}", stage.text));
        let image = if base == "scratch" {
            None
        } else if let Some(i) = self.stage_index(base, stage.index) {
            Some(
                self.stage_images
                    .get(&i)
                    .copied()
                    .flatten()
                    .ok_or_else(|| BuildError::Step {
                        line: stage.line,
                        text: stage.text.clone(),
                        msg: format!("stage {base} made no image"),
                    })?,
            )
        } else {
            let step_err = |msg: String| BuildError::Step {
                line: stage.line,
                text: stage.text.clone(),
                msg,
            };
            match self.store.resolve(base) {
                Ok(id) => Some(id),
                // As docker build: a base named with its registry is pulled.
                Err(e) if names_a_registry(base) => {
                    self.say(&format!("Pulling {base}"));
                    let opts = strata_layerdb::registry::PullOptions::default();
                    let pulled = self
                        .store
                        .pull(base, &opts, &strata_layerdb::registry::NoProgress)
                        .map_err(|pe| step_err(format!("{e}, and pulling it failed: {pe}")))?;
                    Some(pulled.id)
                }
                Err(e) => {
                    return Err(step_err(format!(
                        "{e} (load, import or pull it first; a name with its registry, \
                         such as localhost:5000/NAME, is pulled)"
                    )))
                }
            }
        };
        let config = match &image {
            Some(id) => self.runtime_config(id)?,
            None => Map::new(),
        };
        let mut st = StageState {
            image,
            config,
            args: BTreeMap::new(),
            cached: !self.opts.no_cache,
            cmd_set: false,
            index: stage.index,
        };
        // The base image's ONBUILD triggers run first, as docker runs
        // them; the new image does not inherit them.
        let triggers: Vec<String> = st
            .config
            .remove("OnBuild")
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        for t in &triggers {
            let cf =
                parse::parse(&format!("FROM scratch\n{t}\n")).map_err(|e| BuildError::Step {
                    line: stage.line,
                    text: stage.text.clone(),
                    msg: format!("ONBUILD trigger {t:?} of the base image: {e}"),
                })?;
            for mut step in cf.stages[0].steps.clone() {
                step.line = stage.line;
                step.text = format!("ONBUILD {}", step.text);
                self.say(&format!("{prefix}{}", step.text));
                self.step(&mut st, &step, globals)?;
            }
        }
        for (n, step) in stage.steps.iter().enumerate() {
            self.say(&format!("{prefix}STEP {}/{nsteps}: {}", n + 2, step.text));
            self.step(&mut st, step, globals)?;
        }
        Ok(st.image)
    }

    fn runtime_config(&self, id: &ImageId) -> Result<Map<String, Value>, BuildError> {
        let info = self.store.inspect(id)?;
        let v: Value = serde_json::from_slice(&info.config_bytes).unwrap_or(Value::Null);
        Ok(v.get("config")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default())
    }

    /// One step: each kind of instruction in the module that owns it
    /// (`meta`, `run`, `copy_step`), each ending in [`Builder::advance`].
    fn step(
        &mut self,
        st: &mut StageState,
        step: &Step,
        globals: &BTreeMap<String, Option<String>>,
    ) -> Result<(), BuildError> {
        match &step.instr {
            Instr::Arg(raw) => self.arg_step(st, step, raw, globals),
            Instr::Run(c) => self.run_step(st, step, c),
            Instr::Copy(spec) => self.copy_step(st, step, spec),
            other => self.meta_step(st, step, other),
        }
    }

    /// `BuildError::Step` for `step`, with `msg`.
    fn step_error(step: &Step, msg: String) -> BuildError {
        BuildError::Step {
            line: step.line,
            text: step.text.clone(),
            msg,
        }
    }

    /// The parent image of the stage's next step, and its cache-key form
    /// (`scratch` when there is none).
    fn parent(st: &StageState) -> (Option<String>, String) {
        let parent = st.image.map(|i| i.to_string());
        let key = parent.clone().unwrap_or_else(|| "scratch".into());
        (parent, key)
    }

    /// Records the image a step made under its cache key, and moves the
    /// stage on to it.
    fn made(&mut self, st: &mut StageState, key: &Digest, id: ImageId) -> Result<(), BuildError> {
        self.store.cache_record(key, &id)?;
        self.say(&format!("--> {}", id.short()));
        self.advance(st, id)
    }

    /// A cache hit for `key`, if the stage still takes them.
    fn cached(&mut self, st: &mut StageState, key: &Digest) -> Option<ImageId> {
        if !st.cached {
            return None;
        }
        match self.store.cache_lookup(key) {
            Some(id) => {
                self.say(&format!("--> Using cache {}", id.hex()));
                Some(id)
            }
            None => {
                st.cached = false;
                None
            }
        }
    }

    fn advance(&mut self, st: &mut StageState, id: ImageId) -> Result<(), BuildError> {
        if st.cached {
            self.say(&format!("--> {}", id.short()));
        }
        st.config = self.runtime_config(&id)?;
        st.image = Some(id);
        Ok(())
    }
}

/// A temporary directory removed (recursively) on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn tempdir_in(dir: &Path) -> std::io::Result<TempDir> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::create_dir_all(dir)?;
    let p = dir.join(format!(
        "build-{}-{}",
        std::process::id(),
        crate::ids::ContainerId::generate().short()
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&p)?;
    Ok(TempDir(p))
}

/// Whether an image name starts with a registry (`host.domain/...`,
/// `host:port/...`), as docker tells a registry from a repository path;
/// `localhost/NAME` is a local image.
fn names_a_registry(name: &str) -> bool {
    match name.split_once('/') {
        Some((first, _)) => first != "localhost" && (first.contains('.') || first.contains(':')),
        None => false,
    }
}
