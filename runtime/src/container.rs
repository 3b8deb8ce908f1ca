//! Containers on disk: their configuration, their state, and the registry
//! that finds them by ID, unique ID prefix or name.
//!
//! ```text
//! ROOT/containers/.lock          flock: held while names are checked and dirs added/removed
//! ROOT/containers/ID/config.json what to run (written once, at create)
//! ROOT/containers/ID/state.json  status, pids, exit code (temp + fsync + rename, under ID/lock)
//! ROOT/containers/ID/upper/      the writable layer
//! ROOT/containers/ID/work/       the filesystem's scratch directory
//! ROOT/containers/ID/init/       the init layer: mountpoints for /proc, /dev, /etc/hosts...
//! ROOT/containers/ID/merged/     where the union is mounted while the container runs
//! ROOT/containers/ID/{hostname,hosts,resolv.conf}  bind-mounted into the container
//! ROOT/containers/ID/ctr.log     stdout and stderr of a detached container
//! ROOT/containers/ID/bundle/     the OCI runtime spec (config.json), written at start
//! ROOT/containers/ID/oci/        libcontainer's state while it runs
//! ```
//!
//! Invariant: a container directory appears by one rename from a temporary
//! name, complete; `state.json` is replaced atomically, so readers see the
//! old or the new state, never half of one.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use strata_layerdb::ImageId;

use crate::ids::ContainerId;
use crate::proc::ProcId;

/// Errors of the container registry. Each names the container.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No container has this ID, prefix or name.
    #[error("no such container: {0}")]
    NotFound(String),
    /// Several containers share this ID prefix.
    #[error("container ID prefix {prefix:?} is ambiguous: it matches {}; give more digits", candidates.join(", "))]
    Ambiguous {
        /// The prefix.
        prefix: String,
        /// The short IDs it matches.
        candidates: Vec<String>,
    },
    /// The name is taken.
    #[error("the container name {name:?} is already in use by {id}; remove that container or choose another name")]
    NameInUse {
        /// The name.
        name: String,
        /// The container holding it.
        id: String,
    },
    /// The name has characters docker does not allow.
    #[error("invalid container name {0:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")]
    BadName(String),
    /// A file could not be read or written.
    #[error("{op} {}: {err}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// Why it failed.
        err: std::io::Error,
    },
    /// A metadata file does not parse.
    #[error("{} is damaged: {err}; remove the container with 'strata rm -f'", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// Why.
        err: serde_json::Error,
    },
}

/// Result of registry operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

trait Ctx<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T>;
}

impl<T> Ctx<T> for std::io::Result<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T> {
        self.map_err(|err| Error::Io {
            op,
            path: path.to_path_buf(),
            err,
        })
    }
}

/// Which network a container has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// The host's network namespace (`--network host`).
    Host,
    /// A new network namespace with only `lo`, up (`--network none`; what
    /// configs written before the user-mode networks meant).
    #[default]
    None,
    /// A new network namespace connected by pasta (`--network pasta`, the
    /// default of `run` and `create`; see `crate::network`).
    Pasta,
    /// A new network namespace connected by slirp4netns.
    Slirp4netns,
}

/// A host path bind-mounted into the container (`-v HOST:CTR[:ro]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// The host path (absolute).
    pub host: PathBuf,
    /// The path inside the container (absolute).
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// What to run: fixed when the container is created.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerConfig {
    /// The ID.
    pub id: ContainerId,
    /// The unique name.
    pub name: String,
    /// The image reference as the user gave it.
    pub image: String,
    /// The image it resolved to.
    pub image_id: ImageId,
    /// When it was created (RFC 3339).
    pub created: String,
    /// The process: entrypoint followed by command.
    pub args: Vec<String>,
    /// `KEY=VALUE` environment.
    pub env: Vec<String>,
    /// Working directory inside the container.
    pub workdir: String,
    /// `user[:group]`, names or numbers; empty for root.
    pub user: String,
    /// The hostname.
    pub hostname: String,
    /// Host directories mounted in.
    #[serde(default)]
    pub volumes: Vec<Volume>,
    /// The network.
    #[serde(default)]
    pub network: Network,
    /// `--network MODE:OPTIONS`.
    #[serde(default)]
    pub network_options: crate::network::Options,
    /// `-p` mappings as given (host port 0: chosen at start).
    #[serde(default)]
    pub ports: Vec<crate::network::PortMapping>,
    /// Give the process a terminal.
    #[serde(default)]
    pub tty: bool,
    /// Keep stdin open.
    #[serde(default)]
    pub interactive: bool,
    /// Remove the container when it exits.
    #[serde(default)]
    pub auto_remove: bool,
    /// The signal `stop` sends first (image `StopSignal`, default SIGTERM).
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// Capabilities, seccomp, `no_new_privs` (docker's defaults unless
    /// flags change them).
    #[serde(default)]
    pub security: crate::security::Security,
    /// cgroup limits.
    #[serde(default)]
    pub resources: crate::resources::Resources,
}

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Made, never started (or being started).
    #[default]
    Created,
    /// A supervisor is starting it.
    Starting,
    /// Its process runs.
    Running,
    /// Its process has exited.
    Exited,
}

impl Status {
    /// The name docker uses (`created`, `running`, `exited`).
    pub fn docker_name(self) -> &'static str {
        match self {
            Status::Created | Status::Starting => "created",
            Status::Running => "running",
            Status::Exited => "exited",
        }
    }
}

/// The state of a container (`state.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// Where it is in its life.
    pub status: Status,
    /// The supervisor serving its filesystem, while one runs.
    pub supervisor: Option<ProcId>,
    /// Its init process (host PID), while it runs.
    pub init: Option<ProcId>,
    /// When it last started.
    pub started_at: Option<String>,
    /// When it last exited.
    pub finished_at: Option<String>,
    /// Its exit code (128+N after signal N).
    pub exit_code: Option<i32>,
    /// Why it failed to start, or why it ended abnormally.
    pub error: Option<String>,
}

/// A container's files.
#[derive(Debug, Clone)]
pub struct Paths {
    /// `ROOT/containers/ID`.
    pub dir: PathBuf,
}

impl Paths {
    /// The writable layer.
    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }
    /// The scratch directory.
    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }
    /// The init layer.
    pub fn init(&self) -> PathBuf {
        self.dir.join("init")
    }
    /// The mountpoint of the union.
    pub fn merged(&self) -> PathBuf {
        self.dir.join("merged")
    }
    /// `config.json`.
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.json")
    }
    /// `state.json`.
    pub fn state(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    /// The per-container lock file.
    pub fn lock(&self) -> PathBuf {
        self.dir.join("lock")
    }
    /// The log of a detached container.
    pub fn log(&self) -> PathBuf {
        self.dir.join("ctr.log")
    }
    /// The file bind-mounted on `/etc/hostname`.
    pub fn hostname(&self) -> PathBuf {
        self.dir.join("hostname")
    }
    /// The file bind-mounted on `/etc/hosts`.
    pub fn hosts(&self) -> PathBuf {
        self.dir.join("hosts")
    }
    /// The file bind-mounted on `/etc/resolv.conf`.
    pub fn resolv(&self) -> PathBuf {
        self.dir.join("resolv.conf")
    }
}

/// One container: its configuration and files.
#[derive(Debug, Clone)]
pub struct Container {
    /// What it runs.
    pub config: ContainerConfig,
    /// Its files.
    pub paths: Paths,
}

/// A held flock; released on drop.
pub struct Locked {
    _f: Flock<File>,
}

fn lock_file(p: &Path) -> Result<Locked> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(p)
        .ctx("open", p)?;
    let f = Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| Error::Io {
        op: "lock",
        path: p.to_path_buf(),
        err: e.into(),
    })?;
    Ok(Locked { _f: f })
}

/// Writes `bytes` to `dir/name` by temp file + fsync + rename + fsync(dir).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("f"),
        std::process::id()
    ));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .ctx("create", &tmp)?;
    f.write_all(bytes).ctx("write", &tmp)?;
    f.sync_all().ctx("fsync", &tmp)?;
    fs::rename(&tmp, path).ctx("rename", path)?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

impl Container {
    /// Its ID.
    pub fn id(&self) -> &ContainerId {
        &self.config.id
    }

    /// Reads the state as stored (see [`Container::state`] for the truth).
    pub fn stored_state(&self) -> Result<State> {
        let p = self.paths.state();
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|err| Error::Json { path: p, err }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if self.paths.dir.exists() {
                    Ok(State::default())
                } else {
                    Err(Error::NotFound(self.config.name.clone()))
                }
            }
            Err(e) => Err(Error::Io {
                op: "read",
                path: p,
                err: e,
            }),
        }
    }

    /// Changes the state under the container's lock.
    pub fn update_state<T>(&self, f: impl FnOnce(&mut State) -> T) -> Result<T> {
        if !self.paths.dir.exists() {
            return Err(Error::NotFound(self.config.name.clone()));
        }
        let _l = lock_file(&self.paths.lock()).map_err(|e| match e {
            // Removed meanwhile (`rm`, or `--rm` at exit).
            Error::Io { err, .. } if err.kind() == std::io::ErrorKind::NotFound => {
                Error::NotFound(self.config.name.clone())
            }
            e => e,
        })?;
        let mut s = self.stored_state()?;
        let out = f(&mut s);
        write_atomic(
            &self.paths.state(),
            &serde_json::to_vec_pretty(&s).expect("serialisable"),
        )?;
        Ok(out)
    }

    /// The state, made truthful: a container whose supervisor is gone
    /// (killed, or the machine rebooted) is recorded as exited, with 137
    /// (its init was killed with it, by the parent-death signal).
    pub fn state(&self) -> Result<State> {
        let s = self.stored_state()?;
        if matches!(s.status, Status::Starting | Status::Running)
            && !s.supervisor.as_ref().is_some_and(ProcId::is_alive)
        {
            return self.update_state(|s| {
                if matches!(s.status, Status::Starting | Status::Running)
                    && !s.supervisor.as_ref().is_some_and(ProcId::is_alive)
                {
                    s.status = Status::Exited;
                    s.exit_code.get_or_insert(137);
                    s.finished_at = Some(crate::format::now_rfc3339());
                    s.error
                        .get_or_insert_with(|| "the container's supervisor died".into());
                    s.supervisor = None;
                    s.init = None;
                }
                s.clone()
            });
        }
        Ok(s)
    }

    /// The init process, when the container runs.
    pub fn running_init(&self) -> Result<Option<ProcId>> {
        let s = self.state()?;
        Ok(match s.status {
            Status::Running => s.init.filter(ProcId::is_alive),
            _ => None,
        })
    }
}

/// All containers of a store root.
#[derive(Debug, Clone)]
pub struct Registry {
    dir: PathBuf,
}

impl Registry {
    /// The registry under `ROOT/containers` (created if needed).
    pub fn open(store_root: &Path) -> Result<Registry> {
        let dir = store_root.join("containers");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .ctx("mkdir", &dir)?;
        Ok(Registry { dir })
    }

    /// The directory holding the containers.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Locks the registry (names, adding, removing).
    pub fn lock(&self) -> Result<Locked> {
        lock_file(&self.dir.join(".lock"))
    }

    fn load(&self, id: &str) -> Result<Container> {
        let dir = self.dir.join(id);
        let p = dir.join("config.json");
        let b = fs::read(&p).ctx("read", &p)?;
        let config: ContainerConfig =
            serde_json::from_slice(&b).map_err(|err| Error::Json { path: p, err })?;
        Ok(Container {
            config,
            paths: Paths { dir },
        })
    }

    /// Every container, oldest first.
    pub fn list(&self) -> Result<Vec<Container>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir).ctx("list", &self.dir)? {
            let e = e.ctx("list", &self.dir)?;
            let name = e.file_name();
            let Some(n) = name.to_str() else { continue };
            if n.parse::<ContainerId>().is_err() {
                continue;
            }
            if let Ok(c) = self.load(n) {
                out.push(c);
            }
        }
        out.sort_by(|a, b| a.config.created.cmp(&b.config.created));
        Ok(out)
    }

    /// Container IDs whose directory exists but does not load.
    pub fn damaged(&self) -> Vec<PathBuf> {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        rd.filter_map(|e| e.ok())
            .filter(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n.parse::<ContainerId>().is_ok() && self.load(&n).is_err()
            })
            .map(|e| e.path())
            .collect()
    }

    /// Finds a container by full ID, name, or unique ID prefix.
    pub fn find(&self, reference: &str) -> Result<Container> {
        let all = self.list()?;
        if let Some(c) = all
            .iter()
            .find(|c| c.config.id.as_str() == reference || c.config.name == reference)
        {
            return Ok(c.clone());
        }
        let r = reference.trim_start_matches('/');
        if let Some(c) = all.iter().find(|c| c.config.name == r) {
            return Ok(c.clone());
        }
        let m: Vec<&Container> = all
            .iter()
            .filter(|c| !reference.is_empty() && c.config.id.as_str().starts_with(reference))
            .collect();
        match m.len() {
            0 => Err(Error::NotFound(reference.to_string())),
            1 => Ok(m[0].clone()),
            _ => Err(Error::Ambiguous {
                prefix: reference.to_string(),
                candidates: m.iter().map(|c| c.config.id.short().to_string()).collect(),
            }),
        }
    }

    /// Adds a container: checks the name under the lock, and moves the
    /// directory `prepared` (made by `fill`, inside the registry) into place.
    pub fn create(
        &self,
        mut config: ContainerConfig,
        fill: impl FnOnce(&Paths, &ContainerConfig) -> Result<()>,
    ) -> Result<Container> {
        let _l = self.lock()?;
        let all = self.list()?;
        if config.name.is_empty() {
            config.name = crate::ids::generate_name(|n| all.iter().any(|c| c.config.name == n));
        } else if !crate::ids::valid_name(&config.name) {
            return Err(Error::BadName(config.name));
        } else if let Some(c) = all.iter().find(|c| c.config.name == config.name) {
            return Err(Error::NameInUse {
                name: config.name,
                id: c.config.id.short().to_string(),
            });
        }
        let tmp = self.dir.join(format!(".new-{}", config.id));
        let _ = fs::remove_dir_all(&tmp);
        let paths = Paths { dir: tmp.clone() };
        let result = (|| {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&tmp)
                .ctx("mkdir", &tmp)?;
            for d in [paths.upper(), paths.work(), paths.merged(), paths.init()] {
                fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&d)
                    .ctx("mkdir", &d)?;
            }
            fill(&paths, &config)?;
            write_atomic(
                &paths.config(),
                &serde_json::to_vec_pretty(&config).expect("serialisable"),
            )?;
            write_atomic(
                &paths.state(),
                &serde_json::to_vec_pretty(&State::default()).expect("serialisable"),
            )?;
            let dest = self.dir.join(config.id.as_str());
            fs::rename(&tmp, &dest).ctx("rename", &dest)?;
            if let Ok(d) = File::open(&self.dir) {
                let _ = d.sync_all();
            }
            Ok(())
        })();
        if let Err(e) = result {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        Ok(Container {
            paths: Paths {
                dir: self.dir.join(config.id.as_str()),
            },
            config,
        })
    }

    /// Deletes a container's directory (its mounts must be gone): renamed
    /// away first, so a crash leaves either the container or debris that
    /// `system check` removes.
    pub fn delete(&self, c: &Container) -> Result<()> {
        // What the OCI runtime left (a killed supervisor): processes, cgroups.
        crate::launch::clean_stale(&c.paths, c.id().as_str());
        let _l = self.lock()?;
        let grave = self.dir.join(format!(".rm-{}", c.config.id));
        match fs::rename(&c.paths.dir, &grave) {
            Ok(()) => {}
            // Removed meanwhile (a `run --rm` supervisor racing `rm -f`).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).ctx("rename", &c.paths.dir),
        }
        fs::remove_dir_all(&grave).ctx("remove", &grave)
    }

    /// Leftover `.new-*` and `.rm-*` directories.
    pub fn debris(&self) -> Vec<PathBuf> {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        rd.filter_map(|e| e.ok())
            .filter(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n.starts_with(".new-") || n.starts_with(".rm-")
            })
            .map(|e| e.path())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(id: &str, name: &str) -> ContainerConfig {
        serde_json::from_value(serde_json::json!({
            "id": id, "name": name, "image": "busybox",
            "image_id": format!("sha256:{}", "b".repeat(64)),
            "created": "1970-01-01T00:00:00Z", "args": ["sh"], "env": [],
            "workdir": "/", "user": "", "hostname": "h"
        }))
        .unwrap()
    }

    #[test]
    fn find_by_name_id_and_prefix_and_names_are_unique() {
        let t = tempfile::tempdir().unwrap();
        let reg = Registry::open(t.path()).unwrap();
        let a = format!("abc1{}", "0".repeat(60));
        let b = format!("abc2{}", "0".repeat(60));
        reg.create(config(&a, "one"), |_, _| Ok(())).unwrap();
        reg.create(config(&b, "two"), |_, _| Ok(())).unwrap();
        assert_eq!(reg.find("one").unwrap().config.id.as_str(), a);
        assert_eq!(reg.find("abc2").unwrap().config.name, "two");
        assert_eq!(reg.find(&a).unwrap().config.name, "one");
        match reg.find("abc") {
            Err(Error::Ambiguous { candidates, .. }) => assert_eq!(candidates.len(), 2),
            other => panic!("{other:?}"),
        }
        assert!(matches!(reg.find("zzz"), Err(Error::NotFound(_))));
        let c = format!("abc3{}", "0".repeat(60));
        assert!(matches!(
            reg.create(config(&c, "one"), |_, _| Ok(())),
            Err(Error::NameInUse { .. })
        ));
        // A failed fill leaves nothing behind.
        let e = reg.create(config(&c, "three"), |p, _| {
            Err(Error::BadName(p.dir.display().to_string()))
        });
        assert!(e.is_err());
        assert!(reg.debris().is_empty());
        assert_eq!(reg.list().unwrap().len(), 2);
    }

    #[test]
    fn state_updates_are_atomic_files() {
        let t = tempfile::tempdir().unwrap();
        let reg = Registry::open(t.path()).unwrap();
        let c = reg
            .create(config(&"d".repeat(64), "s"), |_, _| Ok(()))
            .unwrap();
        c.update_state(|s| {
            s.status = Status::Exited;
            s.exit_code = Some(3);
        })
        .unwrap();
        let s = c.state().unwrap();
        assert_eq!((s.status, s.exit_code), (Status::Exited, Some(3)));
        // A running state whose supervisor is gone reads as exited (137).
        c.update_state(|s| {
            s.status = Status::Running;
            s.exit_code = None;
            s.supervisor = Some(ProcId {
                pid: i32::MAX - 1,
                start_time: 1,
            });
        })
        .unwrap();
        let s = c.state().unwrap();
        assert_eq!((s.status, s.exit_code), (Status::Exited, Some(137)));
        let leftovers: Vec<_> = std::fs::read_dir(&c.paths.dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());
        // Regression: `ps` failed with ENOENT on the lock of a container
        // that `--rm` removed while it listed; now it is simply gone.
        reg.delete(&c).unwrap();
        assert!(matches!(c.state(), Err(Error::NotFound(_))));
        assert!(matches!(c.update_state(|_| ()), Err(Error::NotFound(_))));
    }
}
