//! A container's resource limits (`--memory`, `--memory-swap`, `--cpus`,
//! `--cpu-shares`, `--pids-limit`) as the OCI `linux.resources` sets them
//! in its cgroup, and what `strata stats` reads back from that cgroup, on
//! cgroup v1 (and hybrid) hosts and on cgroup v2.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// A limit flag that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid {flag} {value:?}: {reason}")]
pub struct LimitError {
    flag: &'static str,
    value: String,
    reason: &'static str,
}

/// The limits of a container; `None` is unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Memory limit in bytes.
    #[serde(default)]
    pub memory: Option<i64>,
    /// Memory plus swap in bytes (`-1` unlimited swap).
    #[serde(default)]
    pub memory_swap: Option<i64>,
    /// CPUs, in billionths (`--cpus 1.5` is 1_500_000_000).
    #[serde(default)]
    pub nano_cpus: Option<i64>,
    /// Relative CPU weight (cgroup v1 shares).
    #[serde(default)]
    pub cpu_shares: Option<u64>,
    /// Most processes (`-1`, or 0, unlimited, as docker).
    #[serde(default)]
    pub pids_limit: Option<i64>,
}

/// A size as docker reads it: a number with an optional `b`, `k`, `m`,
/// `g` suffix (binary units), `-1` for unlimited.
pub fn parse_size(flag: &'static str, s: &str) -> Result<i64, LimitError> {
    let bad = |reason| LimitError {
        flag,
        value: s.to_string(),
        reason,
    };
    let t = s.trim().to_ascii_lowercase();
    if t == "-1" {
        return Ok(-1);
    }
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mul) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| bad("give a size such as 64m or 1g"))?;
    if !(n.is_finite() && n > 0.0) {
        return Err(bad("the size must be positive"));
    }
    Ok((n * mul as f64) as i64)
}

impl Resources {
    /// The limits of `run`'s flags.
    pub fn from_flags(
        memory: Option<&str>,
        memory_swap: Option<&str>,
        cpus: Option<&str>,
        cpu_shares: Option<u64>,
        pids_limit: Option<i64>,
    ) -> Result<Resources, LimitError> {
        let memory = memory.map(|m| parse_size("--memory", m)).transpose()?;
        let memory_swap = memory_swap
            .map(|m| parse_size("--memory-swap", m))
            .transpose()?;
        if let (Some(m), Some(s)) = (memory, memory_swap) {
            if s != -1 && s < m {
                return Err(LimitError {
                    flag: "--memory-swap",
                    value: s.to_string(),
                    reason: "it must be at least --memory (it counts memory plus swap)",
                });
            }
        }
        if memory_swap.is_some() && memory.is_none() {
            return Err(LimitError {
                flag: "--memory-swap",
                value: memory_swap.unwrap_or_default().to_string(),
                reason: "it needs --memory too",
            });
        }
        let nano_cpus = cpus
            .map(|c| {
                let n: f64 = c.trim().parse().map_err(|_| LimitError {
                    flag: "--cpus",
                    value: c.to_string(),
                    reason: "give a number of CPUs such as 0.5 or 2",
                })?;
                if !(n.is_finite() && n > 0.0) {
                    return Err(LimitError {
                        flag: "--cpus",
                        value: c.to_string(),
                        reason: "it must be positive",
                    });
                }
                Ok((n * 1e9) as i64)
            })
            .transpose()?;
        Ok(Resources {
            memory,
            memory_swap,
            nano_cpus,
            cpu_shares,
            pids_limit: pids_limit.filter(|p| *p > 0),
        })
    }

    /// The OCI `linux.resources` (without devices).
    pub fn oci(&self) -> Value {
        let mut r = json!({});
        let mut mem = json!({});
        if let Some(m) = self.memory.filter(|m| *m > 0) {
            mem["limit"] = json!(m);
        }
        if let Some(s) = self.memory_swap {
            mem["swap"] = json!(s);
        }
        if mem.as_object().is_some_and(|o| !o.is_empty()) {
            r["memory"] = mem;
        }
        let mut cpu = json!({});
        if let Some(n) = self.nano_cpus {
            cpu["period"] = json!(100_000u64);
            cpu["quota"] = json!(n / 10_000);
        }
        if let Some(s) = self.cpu_shares {
            cpu["shares"] = json!(s);
        }
        if cpu.as_object().is_some_and(|o| !o.is_empty()) {
            r["cpu"] = cpu;
        }
        if let Some(p) = self.pids_limit {
            r["pids"] = json!({"limit": p});
        }
        r
    }
}

/// Where the cgroups of a container live: `/strata/ID` under each
/// hierarchy (v1) or the unified one (v2).
pub fn cgroups_path(id: &str) -> String {
    format!("/strata/{id}")
}

/// What `strata stats` shows of one container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Memory in use, bytes.
    pub memory: u64,
    /// The memory limit, bytes (`None`: unlimited).
    pub memory_limit: Option<u64>,
    /// CPU time used, nanoseconds.
    pub cpu_ns: u64,
    /// Processes.
    pub pids: u64,
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// The cgroup directories of process `pid`: `(v2 dir, v1 controller ->
/// dir)`.
fn cgroup_dirs(pid: i32) -> (Option<PathBuf>, Vec<(String, PathBuf)>) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let mut v2 = None;
    let mut v1 = Vec::new();
    let unified = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        PathBuf::from("/sys/fs/cgroup")
    } else {
        PathBuf::from("/sys/fs/cgroup/unified")
    };
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let rel = path.trim_start_matches('/');
        if ctrls.is_empty() {
            v2 = Some(unified.join(rel));
        } else {
            for c in ctrls.split(',') {
                v1.push((c.to_string(), Path::new("/sys/fs/cgroup").join(c).join(rel)));
            }
        }
    }
    (v2, v1)
}

/// Reads the usage of the cgroup of process `pid`.
pub fn usage_of(pid: i32) -> Usage {
    let (v2, v1) = cgroup_dirs(pid);
    let dir = |c: &str| v1.iter().find(|(n, _)| n == c).map(|(_, d)| d.clone());
    let mut u = Usage::default();
    if let Some(m) = dir("memory") {
        u.memory = read_u64(&m.join("memory.usage_in_bytes")).unwrap_or(0);
        // v1 says "no limit" with a huge page-rounded number.
        u.memory_limit = read_u64(&m.join("memory.limit_in_bytes")).filter(|l| *l < (1u64 << 62));
        u.cpu_ns = dir("cpuacct")
            .and_then(|d| read_u64(&d.join("cpuacct.usage")))
            .unwrap_or(0);
        u.pids = dir("pids")
            .and_then(|d| read_u64(&d.join("pids.current")))
            .unwrap_or(0);
    } else if let Some(d) = v2 {
        u.memory = read_u64(&d.join("memory.current")).unwrap_or(0);
        u.memory_limit = read_u64(&d.join("memory.max"));
        u.cpu_ns = std::fs::read_to_string(d.join("cpu.stat"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .map(|us| us * 1000)
            .unwrap_or(0);
        u.pids = read_u64(&d.join("pids.current")).unwrap_or(0);
    }
    u
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_limits_as_docker() {
        assert_eq!(parse_size("--memory", "64m").unwrap(), 64 << 20);
        assert_eq!(parse_size("--memory", "1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("--memory", "1024").unwrap(), 1024);
        assert_eq!(parse_size("--memory", "512kb").unwrap(), 512 << 10);
        assert!(parse_size("--memory", "lots").is_err());
        let r = Resources::from_flags(Some("64m"), None, Some("1.5"), Some(512), Some(50)).unwrap();
        let o = r.oci();
        assert_eq!(o["memory"]["limit"], 64 << 20);
        assert_eq!(o["cpu"]["quota"], 150_000);
        assert_eq!(o["cpu"]["period"], 100_000);
        assert_eq!(o["cpu"]["shares"], 512);
        assert_eq!(o["pids"]["limit"], 50);
        assert!(Resources::from_flags(Some("64m"), Some("32m"), None, None, None).is_err());
        assert!(Resources::from_flags(None, Some("32m"), None, None, None).is_err());
        assert_eq!(Resources::default().oci(), json!({}));
    }
}
