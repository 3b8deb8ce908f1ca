//! What a container may do, as docker decides it by default: its
//! capabilities, its seccomp filter, `no_new_privs`, and the resource
//! limits of its cgroup. The OCI runtime spec (`crate::oci`) is made from
//! these.
//!
//! The seccomp profile is data (`seccomp-default.json`, in docker's profile
//! format: rules that apply only with some capabilities or on some
//! architectures); [`seccomp_for`] turns it into the OCI `linux.seccomp` of
//! one container, for its capabilities and the host's architecture.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Docker's default capabilities: bounding, permitted and effective set.
pub const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability Linux knows (as of 5.9), for `--privileged` and
/// `--cap-add ALL`.
pub const ALL_CAPS: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Docker's default seccomp profile, in docker's format.
pub const DEFAULT_SECCOMP_PROFILE: &str = include_str!("seccomp-default.json");

/// A seccomp profile (docker's format) that cannot be turned into a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// Not JSON, or not the shape of a profile.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// No `defaultAction`.
    #[error("it has no defaultAction")]
    NoDefaultAction,
    /// No `syscalls` list.
    #[error("it has no syscalls list")]
    NoSyscalls,
    /// A rule of `syscalls` without an `action`.
    #[error("a rule has no action")]
    RuleWithoutAction,
}

/// A security flag that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// An unknown capability name.
    #[error("unknown capability {0:?}: use a name such as NET_ADMIN or CAP_NET_ADMIN, or ALL")]
    UnknownCap(String),
    /// A `--security-opt` strata does not know.
    #[error("invalid --security-opt {0:?}: supported are seccomp=unconfined, seccomp=PROFILE.json and no-new-privileges")]
    BadOpt(String),
    /// A seccomp profile that cannot be read.
    #[error("cannot read seccomp profile {path}: {err}")]
    ReadProfile {
        /// The file.
        path: String,
        /// Why.
        err: std::io::Error,
    },
    /// A seccomp profile that does not parse.
    #[error("seccomp profile {path} is not a seccomp profile: {err}")]
    BadProfile {
        /// The file.
        path: String,
        /// Why.
        err: SeccompError,
    },
}

/// What a container may do, fixed when it is created.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Security {
    /// `--privileged`: every capability, no seccomp filter, no masked
    /// paths, every device allowed.
    #[serde(default)]
    pub privileged: bool,
    /// `--cap-add` (canonical `CAP_X` names, or `ALL`).
    #[serde(default)]
    pub cap_add: Vec<String>,
    /// `--cap-drop` (canonical `CAP_X` names, or `ALL`).
    #[serde(default)]
    pub cap_drop: Vec<String>,
    /// The seccomp profile (docker's format), `None` for docker's default.
    #[serde(default)]
    pub seccomp_profile: Option<String>,
    /// `--security-opt seccomp=unconfined`.
    #[serde(default)]
    pub seccomp_unconfined: bool,
    /// `--security-opt no-new-privileges`.
    #[serde(default)]
    pub no_new_privileges: bool,
}

/// A capability name as the spec spells it (`CAP_NET_ADMIN`), or `ALL`.
pub fn canonical_cap(name: &str) -> Result<String, SecurityError> {
    let up = name.trim().to_ascii_uppercase();
    if up == "ALL" {
        return Ok(up);
    }
    let full = if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    };
    if ALL_CAPS.contains(&full.as_str()) {
        Ok(full)
    } else {
        Err(SecurityError::UnknownCap(name.to_string()))
    }
}

impl Security {
    /// The security of `run`'s flags: `--privileged`, `--cap-add`,
    /// `--cap-drop`, `--security-opt` (a profile file is read now, as
    /// docker does).
    pub fn from_flags(
        privileged: bool,
        cap_add: &[String],
        cap_drop: &[String],
        opts: &[String],
    ) -> Result<Security, SecurityError> {
        let mut s = Security {
            privileged,
            cap_add: cap_add
                .iter()
                .map(|c| canonical_cap(c))
                .collect::<Result<_, _>>()?,
            cap_drop: cap_drop
                .iter()
                .map(|c| canonical_cap(c))
                .collect::<Result<_, _>>()?,
            ..Security::default()
        };
        for o in opts {
            let (k, v) = o.split_once(['=', ':']).unwrap_or((o.as_str(), ""));
            match (k, v) {
                ("no-new-privileges", "" | "true") => s.no_new_privileges = true,
                ("no-new-privileges", "false") => s.no_new_privileges = false,
                ("seccomp", "unconfined") => s.seccomp_unconfined = true,
                ("seccomp", path) if !path.is_empty() => {
                    let text = std::fs::read_to_string(path).map_err(|err| {
                        SecurityError::ReadProfile {
                            path: path.to_string(),
                            err,
                        }
                    })?;
                    // Parse now: a bad profile fails `run`, not the start.
                    seccomp_for(&text, &[]).map_err(|err| SecurityError::BadProfile {
                        path: path.to_string(),
                        err,
                    })?;
                    s.seccomp_profile = Some(text);
                }
                _ => return Err(SecurityError::BadOpt(o.clone())),
            }
        }
        Ok(s)
    }

    /// The capabilities of the container's processes (bounding, permitted
    /// and effective alike), as docker computes them: the default set, or
    /// all with `--privileged`; then `--cap-drop`, then `--cap-add`
    /// (`ALL` in either).
    pub fn capabilities(&self) -> Vec<String> {
        if self.privileged {
            return all_caps_here();
        }
        let mut caps: Vec<String> = if self.cap_add.iter().any(|c| c == "ALL") {
            all_caps_here()
        } else {
            DEFAULT_CAPS.iter().map(|c| c.to_string()).collect()
        };
        if self.cap_drop.iter().any(|c| c == "ALL") {
            caps.clear();
        } else {
            caps.retain(|c| !self.cap_drop.contains(c));
        }
        for c in &self.cap_add {
            if c != "ALL" && !caps.contains(c) {
                caps.push(c.clone());
            }
        }
        caps
    }

    /// The OCI `linux.seccomp` of the container, or `None` without a filter.
    pub fn seccomp(&self) -> Result<Option<Value>, SeccompError> {
        if self.privileged || self.seccomp_unconfined {
            return Ok(None);
        }
        let text = self
            .seccomp_profile
            .as_deref()
            .unwrap_or(DEFAULT_SECCOMP_PROFILE);
        seccomp_for(text, &self.capabilities()).map(Some)
    }
}

/// "All" capabilities: every capability in this process's bounding set
/// (a capability outside it cannot be given; root here may lack
/// CAP_SYS_RESOURCE, for one), as podman does for `--privileged`.
fn all_caps_here() -> Vec<String> {
    let bounding = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(u64::MAX);
    // ALL_CAPS is in capability-number order.
    ALL_CAPS
        .iter()
        .enumerate()
        .filter(|(n, _)| bounding & (1u64 << n) != 0)
        .map(|(_, c)| c.to_string())
        .collect()
}

/// docker's name of this machine's architecture (`amd64`, `arm64`...).
fn docker_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "x86",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// libseccomp's name of this machine's architecture.
fn scmp_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "SCMP_ARCH_X86_64",
        "x86" => "SCMP_ARCH_X86",
        "aarch64" => "SCMP_ARCH_AARCH64",
        "arm" => "SCMP_ARCH_ARM",
        "powerpc64" => "SCMP_ARCH_PPC64LE",
        "s390x" => "SCMP_ARCH_S390X",
        "riscv64" => "SCMP_ARCH_RISCV64",
        _ => "SCMP_ARCH_NATIVE",
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether this host's kernel is at least `min` (`4.8`).
fn kernel_at_least(min: &str) -> bool {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let nums = |s: &str| -> Vec<u64> {
        s.split(['.', '-'])
            .take(2)
            .map(|p| p.parse().unwrap_or(0))
            .collect()
    };
    nums(&release) >= nums(min)
}

/// A docker-format profile (`defaultAction`, `archMap`, `syscalls` with
/// `includes`/`excludes` of `caps`, `arches`, `minKernel`) made into the
/// OCI `linux.seccomp` for a process with `caps` on this machine. A profile
/// already in OCI form (`architectures`, no conditions) passes through.
pub fn seccomp_for(profile: &str, caps: &[String]) -> Result<Value, SeccompError> {
    let p: Value = serde_json::from_str(profile)?;
    let default_action = p
        .get("defaultAction")
        .and_then(Value::as_str)
        .ok_or(SeccompError::NoDefaultAction)?;
    let arch = docker_arch();
    let has_cap = |c: &String| caps.contains(c);
    let applies = |rule: &Value| -> bool {
        let inc = rule.get("includes");
        let exc = rule.get("excludes");
        let inc_caps = strings(inc.and_then(|i| i.get("caps")));
        let inc_arches = strings(inc.and_then(|i| i.get("arches")));
        let exc_caps = strings(exc.and_then(|i| i.get("caps")));
        let exc_arches = strings(exc.and_then(|i| i.get("arches")));
        if !inc_caps.iter().all(has_cap) {
            return false;
        }
        if !inc_arches.is_empty() && !inc_arches.iter().any(|a| a == arch) {
            return false;
        }
        if let Some(k) = inc.and_then(|i| i.get("minKernel")).and_then(Value::as_str) {
            if !kernel_at_least(k) {
                return false;
            }
        }
        if !exc_caps.is_empty() && exc_caps.iter().any(has_cap) {
            return false;
        }
        !exc_arches.iter().any(|a| a == arch)
    };
    let mut syscalls = Vec::new();
    for rule in p
        .get("syscalls")
        .and_then(Value::as_array)
        .ok_or(SeccompError::NoSyscalls)?
    {
        if !applies(rule) {
            continue;
        }
        let mut names = strings(rule.get("names"));
        if let Some(n) = rule.get("name").and_then(Value::as_str) {
            names.push(n.to_string());
        }
        let action = rule
            .get("action")
            .and_then(Value::as_str)
            .ok_or(SeccompError::RuleWithoutAction)?;
        let mut r = json!({"names": names, "action": action});
        if let Some(e) = rule.get("errnoRet") {
            r["errnoRet"] = e.clone();
        }
        if let Some(a) = rule.get("args").filter(|a| !a.is_null()) {
            r["args"] = a.clone();
        }
        syscalls.push(r);
    }
    let mut architectures = strings(p.get("architectures"));
    if architectures.is_empty() {
        let me = scmp_arch();
        architectures.push(me.to_string());
        for m in p
            .get("archMap")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if m.get("architecture").and_then(Value::as_str) == Some(me) {
                architectures.extend(strings(m.get("subArchitectures")));
            }
        }
    }
    let mut out = json!({
        "defaultAction": default_action,
        "architectures": architectures,
        "syscalls": syscalls,
    });
    if let Some(e) = p.get("defaultErrnoRet") {
        out["defaultErrnoRet"] = e.clone();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_caps_and_flags_as_docker() {
        let s = Security::default();
        assert_eq!(s.capabilities().len(), 14);
        let s = Security::from_flags(
            false,
            &["net_admin".into()],
            &["CAP_CHOWN".into(), "MKNOD".into()],
            &[],
        )
        .unwrap();
        let caps = s.capabilities();
        assert!(caps.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!caps.contains(&"CAP_CHOWN".to_string()));
        assert!(!caps.contains(&"CAP_MKNOD".to_string()));
        assert_eq!(caps.len(), 13);
        let s = Security::from_flags(false, &["KILL".into()], &["ALL".into()], &[]).unwrap();
        assert_eq!(s.capabilities(), ["CAP_KILL"]);
        let s = Security::from_flags(true, &[], &[], &[]).unwrap();
        assert!(s.capabilities().len() > 30);
        assert!(s.capabilities().contains(&"CAP_SYS_ADMIN".to_string()));
        assert!(s.seccomp().unwrap().is_none());
        assert!(Security::from_flags(false, &["NOPE".into()], &[], &[]).is_err());
        assert!(Security::from_flags(false, &[], &[], &["apparmor=x".into()]).is_err());
    }

    #[test]
    fn default_profile_blocks_mount_unless_sys_admin() {
        let names = |v: &Value| -> Vec<String> {
            v["syscalls"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["action"] == "SCMP_ACT_ALLOW" && r.get("args").is_none())
                .flat_map(|r| strings(r.get("names")))
                .collect()
        };
        let s = Security::default().seccomp().unwrap().unwrap();
        assert_eq!(s["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(s["defaultErrnoRet"], 1);
        let allowed = names(&s);
        assert!(allowed.contains(&"read".to_string()));
        for blocked in [
            "mount",
            "umount2",
            "unshare",
            "setns",
            "reboot",
            "kexec_load",
        ] {
            assert!(!allowed.contains(&blocked.to_string()), "{blocked}");
        }
        let admin = Security {
            cap_add: vec!["CAP_SYS_ADMIN".into()],
            ..Security::default()
        };
        let allowed = names(&admin.seccomp().unwrap().unwrap());
        assert!(allowed.contains(&"mount".to_string()));
        assert!(allowed.contains(&"chroot".to_string()));
    }
}
