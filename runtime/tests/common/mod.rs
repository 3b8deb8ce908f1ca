//! Test support: a temporary store with the busybox fixture loaded, the
//! `strata` binary run like a user runs it, and a guard that removes every
//! container, mount and process of the store on drop (also when a test
//! fails).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The fixture image (saved by podman).
pub fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/busybox-docker-archive.tar")
}

/// What a command did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// A store of its own, cleaned up on drop.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
}

impl Env {
    /// A fresh store with `localhost/busybox:latest` loaded.
    pub fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("strata-rt-")
            .tempdir_in("/var/tmp")
            .or_else(|_| tempfile::tempdir())
            .unwrap();
        let root = dir.path().join("store");
        let env = Env { dir, root };
        let r = env.run(&["load", "-i", fixture().to_str().unwrap()]);
        assert_eq!(r.code, 0, "load: {r:?}");
        env
    }

    /// The command, ready to run.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_strata"));
        c.arg("--root").arg(&self.root).args(args);
        c.stdin(Stdio::null());
        c
    }

    /// Runs `strata ARGS`.
    pub fn run(&self, args: &[&str]) -> Run {
        self.cmd(args).output().expect("run strata").into()
    }

    /// Runs `strata ARGS` and insists on exit code 0; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert_eq!(r.code, 0, "strata {args:?} failed: {r:?}");
        r.stdout
    }

    /// Runs `strata ARGS` with `input` on stdin.
    pub fn run_input(&self, args: &[&str], input: &[u8]) -> Run {
        use std::io::Write;
        let mut c = self.cmd(args);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap().into()
    }

    /// Mountpoints of this store still present.
    pub fn mounts(&self) -> Vec<String> {
        let canon = self.root.canonicalize().unwrap_or(self.root.clone());
        let prefix = canon.to_string_lossy().into_owned();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&prefix))
            .map(str::to_string)
            .collect()
    }

    /// `ps -a` rows as (id, image, status, name); columns are split on
    /// runs of 3+ spaces, as the table pads them.
    pub fn ps(&self) -> Vec<Vec<String>> {
        let out = self.ok(&["ps", "-a"]);
        let mut lines = out.lines();
        let header = lines.next().unwrap();
        assert!(header.starts_with("CONTAINER ID"), "{header}");
        lines
            .map(|l| {
                l.split("   ")
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .collect()
    }

    /// The STATUS column of container `name` (asked with `--format`, so
    /// an empty or filled PORTS column does not shift it).
    pub fn status(&self, name: &str) -> String {
        let out = self.ok(&["ps", "-a", "--format", "{{.Names}}\t{{.Status}}"]);
        out.lines()
            .find_map(|l| l.split_once('\t').filter(|(n, _)| *n == name))
            .map(|(_, s)| s.to_string())
            .unwrap_or_else(|| panic!("{name} not in ps -a"))
    }

    /// `inspect -f TEMPLATE NAME`, trimmed.
    pub fn inspect(&self, name: &str, tpl: &str) -> String {
        self.ok(&["inspect", "-f", tpl, name]).trim().to_string()
    }

    /// Polls (bounded) until `f` holds.
    pub fn wait_until(&self, what: &str, mut f: impl FnMut() -> bool) {
        let start = Instant::now();
        while !f() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn state_pids(root: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    let Ok(rd) = std::fs::read_dir(root.join("containers")) else {
        return pids;
    };
    for e in rd.flatten() {
        let Ok(s) = std::fs::read(e.path().join("state.json")) else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&s) else {
            continue;
        };
        for k in ["init", "supervisor"] {
            if let Some(p) = v[k]["pid"].as_i64() {
                pids.push(p as i32);
            }
        }
    }
    pids
}

impl Drop for Env {
    fn drop(&mut self) {
        let ids = self.run(&["ps", "-aq"]).stdout;
        for id in ids.lines() {
            let _ = self.run(&["rm", "-f", id]);
        }
        // Whatever is left (a test that failed half-way): kill and detach.
        for pid in state_pids(&self.root) {
            // Only processes that still look like ours.
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains("strata") {
                unsafe_kill(pid);
            }
        }
        let mut mounts = self.mounts();
        mounts.sort();
        for m in mounts.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
    }
}

fn unsafe_kill(pid: i32) {
    let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
}
