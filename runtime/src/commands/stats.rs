//! `stats`: memory, CPU and processes of running containers, read from
//! their cgroups, in docker's columns.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::Ctx;
use crate::cli::StatsArgs;
use crate::container::Container;
use crate::format::Table;
use crate::sys;

use crate::resources::{self, Usage};

/// Bytes as docker prints them: binary units, four significant digits
/// (`1.5MiB`, `64MiB`).
pub(super) fn binary_size(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i < units.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    let digits = if v >= 1000.0 {
        0
    } else if v >= 100.0 {
        1
    } else if v >= 10.0 {
        2
    } else {
        3
    };
    let s = format!("{v:.digits$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    format!("{s}{}", units[i])
}

fn host_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn sample(list: &[(Container, i32)]) -> Vec<Usage> {
    list.iter()
        .map(|(_, pid)| resources::usage_of(*pid))
        .collect()
}

pub(super) fn stats(ctx: &Ctx, a: &StatsArgs) -> Result<i32> {
    if strata_fs::sys::in_user_namespace() {
        bail!("stats reads each container's cgroup, and rootless containers have none of their own here (that needs cgroup v2 with delegation)");
    }
    let (names, all, no_stream) = (&a.containers, a.all, a.no_stream);
    let pick = |ctx: &Ctx| -> Result<Vec<(Container, i32)>> {
        let list: Vec<Container> = if names.is_empty() {
            ctx.reg.list()?
        } else {
            names
                .iter()
                .map(|n| ctx.container(n))
                .collect::<Result<_>>()?
        };
        let mut out = Vec::new();
        for c in list {
            match c.running_init() {
                Ok(Some(p)) => out.push((c, p.pid)),
                Ok(None) if !names.is_empty() => {
                    bail!("container {} is not running", c.config.name)
                }
                _ if all => out.push((c, 0)),
                _ => {}
            }
        }
        Ok(out)
    };
    let total = host_memory();
    let interval = Duration::from_millis(500);
    loop {
        let list = pick(ctx)?;
        let before = sample(&list);
        let t0 = Instant::now();
        std::thread::sleep(interval);
        let after = sample(&list);
        let wall = t0.elapsed().as_nanos().max(1) as f64;
        let mut t = Table::new(&[
            "CONTAINER ID",
            "NAME",
            "CPU %",
            "MEM USAGE / LIMIT",
            "MEM %",
            "PIDS",
        ]);
        for (((c, pid), b), a) in list.iter().zip(&before).zip(&after) {
            let (cpu, mem) = if *pid == 0 {
                (0.0, Usage::default())
            } else {
                let cpu = a.cpu_ns.saturating_sub(b.cpu_ns) as f64 / wall * 100.0;
                (cpu, a.clone())
            };
            let limit = mem.memory_limit.unwrap_or(total).min(total.max(1));
            let pct = if limit > 0 {
                mem.memory as f64 / limit as f64 * 100.0
            } else {
                0.0
            };
            t.row(vec![
                c.id().short().to_string(),
                c.config.name.clone(),
                format!("{cpu:.2}%"),
                format!("{} / {}", binary_size(mem.memory), binary_size(limit)),
                format!("{pct:.2}%"),
                mem.pids.to_string(),
            ]);
        }
        let mut out = std::io::stdout().lock();
        if !no_stream && sys::is_tty(std::io::stdout()) {
            // Clear the screen, as docker does.
            write!(out, "\x1b[2J\x1b[H")?;
        }
        write!(out, "{}", t.render())?;
        out.flush()?;
        if no_stream {
            return Ok(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_as_docker_stats() {
        assert_eq!(binary_size(64 << 20), "64MiB");
        assert_eq!(binary_size(1536 * 1024), "1.5MiB");
        assert_eq!(binary_size(512), "512B");
        assert_eq!(binary_size(123_456_789), "117.7MiB");
    }
}
