//! The benchmark's error type: every variant names what failed and on what.

use std::path::PathBuf;

/// What can go wrong while generating data, mounting or running a workload.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A filesystem operation failed.
    /// (The cause is part of the message, not a separate source, so that
    /// recorded failures read whole.)
    #[error("{what} {path}: {err}")]
    Io {
        what: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
    /// An external program could not be started or exited with an error.
    #[error("{command} failed ({status}){}", stderr_suffix(.stderr))]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    /// A driver could not mount a stack.
    #[error("{driver}: mounting {mountpoint} failed: {reason}")]
    Mount {
        driver: String,
        mountpoint: PathBuf,
        reason: String,
    },
    /// A driver left a mount or a server process behind.
    #[error("{driver}: unmounting {mountpoint}: {reason}")]
    Unmount {
        driver: String,
        mountpoint: PathBuf,
        reason: String,
    },
    /// A `--drivers` element that names no driver.
    #[error("unknown driver {0:?}: expected strata, kernel, fuse-overlayfs, native or prog:/path/to/program, then @userns (not for native) and [+opt,...]")]
    UnknownDriver(String),
    /// A run of an `@userns` driver failed in, or on the way into, its
    /// user namespace.
    #[error("{driver} (in a user namespace): {reason}")]
    Userns { driver: String, reason: String },
    /// A `--workloads` element that names no workload.
    #[error("unknown workload {0:?}; `strata-bench --list` shows them")]
    UnknownWorkload(String),
    /// The benchmark needs root (kernel overlay mounts, drop_caches, whiteout devices).
    #[error("strata-bench must run as root: it mounts kernel overlayfs, drops the page cache and creates whiteout devices")]
    NotRoot,
    /// No driver is left to run.
    #[error("no driver is available to run (see the notes above)")]
    NoDrivers,
    /// The user pressed Ctrl-C; mounts were cleaned up.
    #[error("interrupted; every mount was cleaned up")]
    Interrupted,
    /// A check of `--quick` mode failed.
    #[error("check failed: {0}")]
    Check(String),
}

fn stderr_suffix(stderr: &str) -> String {
    let s = stderr.trim();
    if s.is_empty() {
        String::new()
    } else {
        // The last lines say what went wrong; a flood of them helps nobody.
        let lines: Vec<&str> = s.lines().collect();
        let tail = &lines[lines.len().saturating_sub(6)..];
        format!(": {}", tail.join(" | "))
    }
}

/// Shorthand for the results of this crate.
pub type Result<T, E = BenchError> = std::result::Result<T, E>;

/// Returns a closure turning an `io::Error` into [`BenchError::Io`] on `path`.
pub(crate) fn io_err(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> BenchError {
    let path = path.into();
    move |err| BenchError::Io { what, path, err }
}
