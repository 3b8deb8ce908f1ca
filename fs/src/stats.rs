//! A count of FUSE requests by operation, with the time the server spent
//! on them: `-o stats=FILE` appends one report per mount to FILE when the
//! mount ends. It is how round trips are measured (how many requests an
//! `rm -rf` or a `git status` costs), not a profiler: timing is of the
//! handler only, not of the kernel's queueing.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Every operation Strata answers, in report order.
pub const OPS: &[&str] = &[
    "lookup",
    "forget",
    "getattr",
    "setattr",
    "readlink",
    "mknod",
    "mkdir",
    "unlink",
    "rmdir",
    "symlink",
    "rename",
    "link",
    "open",
    "read",
    "write",
    "flush",
    "release",
    "fsync",
    "opendir",
    "readdir",
    "readdirplus",
    "releasedir",
    "fsyncdir",
    "statfs",
    "setxattr",
    "getxattr",
    "listxattr",
    "removexattr",
    "access",
    "create",
    "tmpfile",
    "fallocate",
    "lseek",
    "copy_file_range",
];

/// Per-operation counters; all zero and untouched unless enabled.
#[derive(Debug)]
pub struct OpStats {
    enabled: bool,
    count: Vec<AtomicU64>,
    nanos: Vec<AtomicU64>,
}

/// A running request: counted when dropped.
pub struct Timing<'a> {
    stats: &'a OpStats,
    slot: usize,
    start: Instant,
}

impl Drop for Timing<'_> {
    fn drop(&mut self) {
        let ns = self.start.elapsed().as_nanos() as u64;
        self.stats.count[self.slot].fetch_add(1, Ordering::Relaxed);
        self.stats.nanos[self.slot].fetch_add(ns, Ordering::Relaxed);
    }
}

impl OpStats {
    /// Counters, live only if `enabled`.
    pub fn new(enabled: bool) -> OpStats {
        let zeros = || OPS.iter().map(|_| AtomicU64::new(0)).collect();
        OpStats {
            enabled,
            count: zeros(),
            nanos: zeros(),
        }
    }

    /// Starts timing one request of `op` (one of [`OPS`]).
    pub fn start(&self, op: &'static str) -> Option<Timing<'_>> {
        if !self.enabled {
            return None;
        }
        let slot = OPS.iter().position(|o| *o == op)?;
        Some(Timing {
            stats: self,
            slot,
            start: Instant::now(),
        })
    }

    /// `(op, requests, server seconds)` of every operation seen.
    pub fn snapshot(&self) -> Vec<(&'static str, u64, f64)> {
        OPS.iter()
            .enumerate()
            .map(|(i, op)| {
                let n = self.count[i].load(Ordering::Relaxed);
                let ns = self.nanos[i].load(Ordering::Relaxed);
                (*op, n, ns as f64 / 1e9)
            })
            .filter(|(_, n, _)| *n > 0)
            .collect()
    }

    /// The report: a header line naming the mount, then one line per
    /// operation (`op requests seconds µs-per-request`), then the total.
    pub fn report(&self, mountpoint: &Path) -> String {
        let mut out = format!("# strata-mount stats for {}\n", mountpoint.display());
        let (mut total, mut secs) = (0, 0.0);
        for (op, n, s) in self.snapshot() {
            let _ = writeln!(
                out,
                "{op:<16} {n:>10} {s:>10.3}s {:>8.1}us",
                s * 1e6 / n as f64
            );
            total += n;
            secs += s;
        }
        let _ = writeln!(out, "{:<16} {total:>10} {secs:>10.3}s", "total");
        out
    }

    /// Appends the report and `extra` lines to `file`.
    pub fn append_to(&self, file: &Path, mountpoint: &Path, extra: &str) -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)?;
        f.write_all((self.report(mountpoint) + extra).as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_when_enabled() {
        let off = OpStats::new(false);
        assert!(off.start("lookup").is_none());
        assert!(off.snapshot().is_empty());
        let on = OpStats::new(true);
        drop(on.start("lookup"));
        drop(on.start("lookup"));
        drop(on.start("unlink"));
        let snap = on.snapshot();
        assert_eq!(snap.len(), 2);
        assert_eq!((snap[0].0, snap[0].1), ("lookup", 2));
        assert_eq!((snap[1].0, snap[1].1), ("unlink", 1));
        let r = on.report(Path::new("/m"));
        assert!(r.starts_with("# strata-mount stats for /m\n"), "{r}");
        assert!(r.contains("total                     3"), "{r}");
    }

    #[test]
    fn every_op_has_a_slot() {
        let s = OpStats::new(true);
        for op in OPS {
            assert!(s.start(op).is_some(), "{op}");
        }
    }
}
