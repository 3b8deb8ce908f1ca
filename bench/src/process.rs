//! What the benchmark learns from /proc (mounts, FUSE server processes and
//! their peak memory) and how it runs other programs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{BenchError, Result};

/// How a mountpoint appears in /proc/self/mountinfo (octal escapes).
fn mountinfo_escape(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        match c {
            ' ' | '\t' | '\n' | '\\' => out.push_str(&format!("\\{:03o}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn mountpoints() -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .collect()
}

/// Whether something is mounted at `path`.
pub fn is_mountpoint(path: &Path) -> bool {
    let want = mountinfo_escape(path);
    mountpoints().contains(&want)
}

/// Mountpoints at or below `dir` (as written in mountinfo).
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let want = mountinfo_escape(dir);
    mountpoints()
        .into_iter()
        .filter(|m| m == &want || m.starts_with(&format!("{want}/")))
        .collect()
}

/// Whether `pid` exists and is not a zombie.
pub fn process_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the ")" that closes comm.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Processes (other than this one) with an argument for which `matches`
/// holds: finds a FUSE server by its mountpoint.
pub fn pids_with_arg(matches: impl Fn(&[u8]) -> bool) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline.split(|&b| b == 0).any(&matches) && process_alive(pid) {
            out.push(pid);
        }
    }
    out
}

/// Processes whose command line holds `path` as one argument.
pub fn pids_with_path_arg(path: &Path) -> Vec<i32> {
    let want = path.as_os_str().as_encoded_bytes();
    pids_with_arg(|a| a == want)
}

/// Processes with an argument at or below `dir`.
pub fn pids_with_arg_under(dir: &Path) -> Vec<i32> {
    let want = dir.as_os_str().as_encoded_bytes();
    pids_with_arg(|a| a.starts_with(want))
}

/// The peak resident set size (`VmHWM`) of `pid` in KiB.
pub fn peak_rss_kib(pid: i32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Polls until `pid` has exited (or is a zombie), at most `timeout`.
pub fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let start = Instant::now();
    while process_alive(pid) {
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// Looks `name` up in `$PATH` (or takes it as a path if it has a `/`).
pub fn find_program(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_executable(&p).then_some(p);
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A readable form of a command line, for error messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion with stdin and stdout on /dev/null, failing with
/// its stderr when it exits non-zero.
pub fn run(cmd: &mut Command) -> Result<()> {
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    run_capture(cmd).map(drop)
}

/// Runs `cmd` to completion with stdin on /dev/null and returns its stdout,
/// failing with its stderr when it exits non-zero.
pub fn run_capture(cmd: &mut Command) -> Result<Vec<u8>> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| BenchError::Command {
            command: describe(cmd),
            status: format!("could not start: {e}"),
            stderr: String::new(),
        })?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(BenchError::Command {
            command: describe(cmd),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}
