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

/// A FUSE operation Strata answers. It decides the request's stats slot
/// and how it takes the namespace lock, so a new operation cannot be
/// counted or locked wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lookup,
    Forget,
    Getattr,
    Setattr,
    Readlink,
    Mknod,
    Mkdir,
    Unlink,
    Rmdir,
    Symlink,
    Rename,
    Link,
    Open,
    Read,
    Write,
    Flush,
    Release,
    Fsync,
    Opendir,
    Readdir,
    Readdirplus,
    Releasedir,
    Fsyncdir,
    Statfs,
    Setxattr,
    Getxattr,
    Listxattr,
    Removexattr,
    Access,
    Create,
    Tmpfile,
    Fallocate,
    Lseek,
    CopyFileRange,
}

impl Op {
    /// Every operation, in report order.
    pub const ALL: [Op; 34] = [
        Op::Lookup,
        Op::Forget,
        Op::Getattr,
        Op::Setattr,
        Op::Readlink,
        Op::Mknod,
        Op::Mkdir,
        Op::Unlink,
        Op::Rmdir,
        Op::Symlink,
        Op::Rename,
        Op::Link,
        Op::Open,
        Op::Read,
        Op::Write,
        Op::Flush,
        Op::Release,
        Op::Fsync,
        Op::Opendir,
        Op::Readdir,
        Op::Readdirplus,
        Op::Releasedir,
        Op::Fsyncdir,
        Op::Statfs,
        Op::Setxattr,
        Op::Getxattr,
        Op::Listxattr,
        Op::Removexattr,
        Op::Access,
        Op::Create,
        Op::Tmpfile,
        Op::Fallocate,
        Op::Lseek,
        Op::CopyFileRange,
    ];

    /// Its name in the report: the FUSE opcode's name, lower case.
    pub fn name(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::Forget => "forget",
            Op::Getattr => "getattr",
            Op::Setattr => "setattr",
            Op::Readlink => "readlink",
            Op::Mknod => "mknod",
            Op::Mkdir => "mkdir",
            Op::Unlink => "unlink",
            Op::Rmdir => "rmdir",
            Op::Symlink => "symlink",
            Op::Rename => "rename",
            Op::Link => "link",
            Op::Open => "open",
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Release => "release",
            Op::Fsync => "fsync",
            Op::Opendir => "opendir",
            Op::Readdir => "readdir",
            Op::Readdirplus => "readdirplus",
            Op::Releasedir => "releasedir",
            Op::Fsyncdir => "fsyncdir",
            Op::Statfs => "statfs",
            Op::Setxattr => "setxattr",
            Op::Getxattr => "getxattr",
            Op::Listxattr => "listxattr",
            Op::Removexattr => "removexattr",
            Op::Access => "access",
            Op::Create => "create",
            Op::Tmpfile => "tmpfile",
            Op::Fallocate => "fallocate",
            Op::Lseek => "lseek",
            Op::CopyFileRange => "copy_file_range",
        }
    }

    /// Whether it moves or removes names. Those hold the namespace lock
    /// exclusively (see `Overlay::namespace`); every other request shares it.
    pub fn moves_names(self) -> bool {
        matches!(self, Op::Rename | Op::Unlink | Op::Rmdir)
    }

    /// Its slot in the counters.
    fn slot(self) -> usize {
        self as usize
    }
}

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
        let zeros = || Op::ALL.iter().map(|_| AtomicU64::new(0)).collect();
        OpStats {
            enabled,
            count: zeros(),
            nanos: zeros(),
        }
    }

    /// Starts timing one request of `op`.
    pub fn start(&self, op: Op) -> Option<Timing<'_>> {
        if !self.enabled {
            return None;
        }
        Some(Timing {
            stats: self,
            slot: op.slot(),
            start: Instant::now(),
        })
    }

    /// `(op, requests, server seconds)` of every operation seen.
    pub fn snapshot(&self) -> Vec<(&'static str, u64, f64)> {
        Op::ALL
            .iter()
            .map(|op| {
                let n = self.count[op.slot()].load(Ordering::Relaxed);
                let ns = self.nanos[op.slot()].load(Ordering::Relaxed);
                (op.name(), n, ns as f64 / 1e9)
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
        assert!(off.start(Op::Lookup).is_none());
        assert!(off.snapshot().is_empty());
        let on = OpStats::new(true);
        drop(on.start(Op::Lookup));
        drop(on.start(Op::Lookup));
        drop(on.start(Op::Unlink));
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
        for (i, op) in Op::ALL.into_iter().enumerate() {
            assert_eq!(op.slot(), i, "{op:?} is in report order");
            assert!(s.start(op).is_some(), "{op:?}");
        }
    }
}
