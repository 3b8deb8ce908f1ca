//! What `/proc` tells about processes and mounts: process identity that
//! survives PID reuse (pid + start time), the mount table, and the
//! processes of a PID namespace.

use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// A process, named so that a recycled PID is not mistaken for it: its PID
/// and its start time (clock ticks since boot, field 22 of `/proc/PID/stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcId {
    /// The PID, in the host's PID namespace.
    pub pid: i32,
    /// Its start time.
    pub start_time: u64,
}

/// The start time of `pid`, or `None` if there is no such process (a
/// zombie counts as gone).
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parens: fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // rest starts at field 3 (state); start time is field 22.
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

impl ProcId {
    /// The identity of a live process.
    pub fn of(pid: i32) -> Option<ProcId> {
        Some(ProcId {
            pid,
            start_time: start_time(pid)?,
        })
    }

    /// The calling process.
    pub fn me() -> ProcId {
        ProcId::of(std::process::id() as i32).unwrap_or(ProcId {
            pid: std::process::id() as i32,
            start_time: 0,
        })
    }

    /// Is this very process still alive (not a zombie, PID not reused)?
    pub fn is_alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
    }

    /// Sends a signal, if the process is still this one.
    pub fn signal(&self, sig: Signal) -> Result<(), nix::errno::Errno> {
        if !self.is_alive() {
            return Err(nix::errno::Errno::ESRCH);
        }
        nix::sys::signal::kill(Pid::from_raw(self.pid), sig)
    }
}

fn unescape_mountinfo(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mountpoints of this mount namespace, in mount order.
pub fn mountpoints() -> Vec<PathBuf> {
    let Ok(s) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    s.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .collect()
}

/// Is something mounted exactly at `path`?
pub fn is_mounted(path: &Path) -> bool {
    let p = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    mountpoints().contains(&p)
}

/// Mountpoints at or under `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let d = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mut v: Vec<PathBuf> = mountpoints()
        .into_iter()
        .filter(|m| m.starts_with(&d))
        .collect();
    v.sort();
    v.dedup();
    v.reverse();
    v
}

/// Lazily unmounts everything at or under `dir` (MNT_DETACH: busy mounts
/// go away when their last user does). Returns what was unmounted.
pub fn unmount_all_under(dir: &Path) -> Vec<PathBuf> {
    let mut done = Vec::new();
    for m in mounts_under(dir) {
        if strata_fs::unmount(&m).is_ok() {
            done.push(m);
        }
    }
    done
}

/// Host PIDs of every process in the PID namespace of `init`.
pub fn pids_in_namespace_of(init: i32) -> Vec<i32> {
    let Ok(ns) = std::fs::read_link(format!("/proc/{init}/ns/pid")) else {
        return Vec::new();
    };
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/ns/pid"))
                .ok()
                .as_ref()
                == Some(&ns)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn me_is_alive_and_a_wrong_start_time_is_not() {
        let me = ProcId::me();
        assert!(me.is_alive());
        let other = ProcId {
            pid: me.pid,
            start_time: me.start_time + 1,
        };
        assert!(!other.is_alive());
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert!(mountpoints().contains(&PathBuf::from("/")));
    }
}
