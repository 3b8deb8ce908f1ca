//! What a container runs: the image config merged with the flags of
//! `create`/`run`, as docker merges them.
//!
//! - `--entrypoint` replaces the image's entrypoint (`""` clears it) and
//!   drops the image's `Cmd`; command arguments replace `Cmd`.
//! - Environment: the image's, then `--env-file` lines, then `-e` (a bare
//!   `-e KEY` copies the host's value); later wins. `PATH` defaults to the
//!   usual one, `HOSTNAME` is set, `TERM=xterm` with a terminal.
//! - `-w`, `-u` and `--hostname` replace the image's (or the defaults `/`,
//!   root, and the short container ID).

use std::path::{Path, PathBuf};

use crate::container::{ContainerConfig, Network, Volume};
use crate::ids::ContainerId;

/// The default `PATH`, as docker sets it.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A flag value that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Neither the image nor the flags name a command.
    #[error("no command specified: image {0} has no Cmd or Entrypoint; give a command after the image name")]
    NoCommand(String),
    /// A malformed flag.
    #[error("invalid {flag} {value:?}: {reason}")]
    Invalid {
        /// The flag.
        flag: &'static str,
        /// Its value.
        value: String,
        /// Why.
        reason: String,
    },
    /// A `--network` or `-p` value that cannot be used.
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
    /// An env file that cannot be read.
    #[error("cannot read env file {}: {err}", path.display())]
    EnvFile {
        /// The file.
        path: PathBuf,
        /// Why.
        err: std::io::Error,
    },
}

/// The flags of `create` and `run` that shape the container.
#[derive(Debug, Clone, Default)]
pub struct RunFlags {
    /// `--name`.
    pub name: Option<String>,
    /// `-e`.
    pub env: Vec<String>,
    /// `--env-file`.
    pub env_files: Vec<PathBuf>,
    /// `-w`.
    pub workdir: Option<String>,
    /// `-u`.
    pub user: Option<String>,
    /// `--hostname`.
    pub hostname: Option<String>,
    /// `--entrypoint`.
    pub entrypoint: Option<String>,
    /// `-v HOST:CTR[:ro]`.
    pub volumes: Vec<String>,
    /// `--network` (unset: none; `run` and `create` default to pasta).
    pub network: Option<String>,
    /// `-p`.
    pub publish: Vec<String>,
    /// `-t`.
    pub tty: bool,
    /// `-i`.
    pub interactive: bool,
    /// `--rm`.
    pub auto_remove: bool,
    /// `--privileged`, `--cap-add`, `--cap-drop`, `--security-opt`.
    pub security: crate::security::Security,
    /// `--memory`, `--cpus`... .
    pub resources: crate::resources::Resources,
}

fn set_env(env: &mut Vec<String>, kv: String) {
    let key = kv.split('=').next().unwrap_or("").to_string();
    env.retain(|e| e.split('=').next() != Some(key.as_str()));
    env.push(kv);
}

/// Applies `-e` style entries (`K=V`, or `K` to copy the host's value) to
/// `env`.
pub fn apply_env_flags(env: &mut Vec<String>, flags: &[String]) -> Result<(), SpecError> {
    for e in flags {
        if e.is_empty() || e.starts_with('=') {
            return Err(SpecError::Invalid {
                flag: "--env",
                value: e.clone(),
                reason: "expected KEY=VALUE".into(),
            });
        }
        if e.contains('=') {
            set_env(env, e.clone());
        } else if let Ok(v) = std::env::var(e) {
            set_env(env, format!("{e}={v}"));
        }
    }
    Ok(())
}

fn read_env_file(path: &Path) -> Result<Vec<String>, SpecError> {
    let s = std::fs::read_to_string(path).map_err(|err| SpecError::EnvFile {
        path: path.to_path_buf(),
        err,
    })?;
    Ok(s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

/// Parses `-v HOST:CTR[:ro|rw]`.
pub fn parse_volume(v: &str) -> Result<Volume, SpecError> {
    let bad = |reason: &str| SpecError::Invalid {
        flag: "--volume",
        value: v.to_string(),
        reason: reason.to_string(),
    };
    let parts: Vec<&str> = v.split(':').collect();
    let (host, target, opts) = match parts.as_slice() {
        [h, t] => (*h, *t, ""),
        [h, t, o] => (*h, *t, *o),
        _ => return Err(bad("expected HOST:CONTAINER[:ro]")),
    };
    let read_only = match opts {
        "" | "rw" => false,
        "ro" => true,
        _ => return Err(bad("the only options are ro and rw")),
    };
    if !host.starts_with('/') {
        return Err(bad(
            "the host path must be absolute (named volumes are not supported)",
        ));
    }
    if !target.starts_with('/') || target.split('/').any(|c| c == "..") {
        return Err(bad("the container path must be absolute, without '..'"));
    }
    let host = Path::new(host)
        .canonicalize()
        .map_err(|e| bad(&format!("host path: {e}")))?;
    Ok(Volume {
        host,
        target: target.to_string(),
        read_only,
    })
}

/// Builds a container's configuration from its image's config and flags.
pub fn build(
    id: ContainerId,
    image_ref: &str,
    image: &strata_layerdb::ImageInfo,
    cmd: &[String],
    flags: &RunFlags,
) -> Result<ContainerConfig, SpecError> {
    let rc = image.config.config.clone().unwrap_or_default();
    let entrypoint: Vec<String> = match &flags.entrypoint {
        Some(e) if e.is_empty() => Vec::new(),
        Some(e) if e.trim_start().starts_with('[') => {
            serde_json::from_str(e).map_err(|err| SpecError::Invalid {
                flag: "--entrypoint",
                value: e.clone(),
                reason: err.to_string(),
            })?
        }
        Some(e) => vec![e.clone()],
        None => rc.entrypoint.clone().unwrap_or_default(),
    };
    let cmd: Vec<String> = if !cmd.is_empty() {
        cmd.to_vec()
    } else if flags.entrypoint.is_some() {
        Vec::new()
    } else {
        rc.cmd.clone().unwrap_or_default()
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(SpecError::NoCommand(image_ref.to_string()));
    }
    let hostname = match &flags.hostname {
        Some(h) if h.is_empty() || h.len() > 64 || h.contains(['/', ' ', '\0']) => {
            return Err(SpecError::Invalid {
                flag: "--hostname",
                value: h.clone(),
                reason: "must be 1-64 characters without '/' or spaces".into(),
            })
        }
        Some(h) => h.clone(),
        None => id.short().to_string(),
    };
    let mut env: Vec<String> = Vec::new();
    for e in rc.env.clone().unwrap_or_default() {
        set_env(&mut env, e);
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    set_env(&mut env, format!("HOSTNAME={hostname}"));
    if flags.tty {
        set_env(&mut env, "TERM=xterm".into());
    }
    for f in &flags.env_files {
        apply_env_flags(&mut env, &read_env_file(f)?)?;
    }
    apply_env_flags(&mut env, &flags.env)?;
    let workdir = flags
        .workdir
        .clone()
        .or(rc.working_dir.clone())
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    if !workdir.starts_with('/') {
        return Err(SpecError::Invalid {
            flag: "--workdir",
            value: workdir,
            reason: "must be an absolute path".into(),
        });
    }
    let (network, network_options) =
        crate::network::parse_mode(flags.network.as_deref().unwrap_or("none"))?;
    let ports = flags
        .publish
        .iter()
        .map(|p| crate::network::parse_publish(p))
        .collect::<Result<Vec<_>, _>>()?;
    if !ports.is_empty() && matches!(network, Network::None | Network::Host) {
        return Err(
            crate::network::NetworkError::PortsWithout(crate::network::name(network)).into(),
        );
    }
    let volumes = flags
        .volumes
        .iter()
        .map(|v| parse_volume(v))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ContainerConfig {
        id,
        name: flags.name.clone().unwrap_or_default(),
        image: image_ref.to_string(),
        image_id: image.id,
        created: crate::format::now_rfc3339(),
        args,
        env,
        workdir,
        user: flags.user.clone().or(rc.user.clone()).unwrap_or_default(),
        hostname,
        volumes,
        network,
        network_options,
        ports,
        tty: flags.tty,
        interactive: flags.interactive,
        auto_remove: flags.auto_remove,
        stop_signal: rc.stop_signal.clone(),
        security: flags.security.clone(),
        resources: flags.resources.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_flags_override_and_copy_host() {
        let mut env = vec!["PATH=/bin".to_string(), "A=1".to_string()];
        std::env::set_var("STRATA_SPEC_TEST", "host");
        apply_env_flags(&mut env, &["A=2".into(), "STRATA_SPEC_TEST".into()]).unwrap();
        assert_eq!(env, vec!["PATH=/bin", "A=2", "STRATA_SPEC_TEST=host"]);
        assert!(apply_env_flags(&mut env, &["=x".into()]).is_err());
    }

    #[test]
    fn volumes_parse() {
        let v = parse_volume("/tmp:/data:ro").unwrap();
        assert!(v.read_only);
        assert_eq!(v.target, "/data");
        assert!(parse_volume("rel:/data").is_err());
        assert!(parse_volume("/tmp:data").is_err());
        assert!(parse_volume("/tmp:/d:xx").is_err());
    }
}
