//! Crash points, for the tests that kill the snapshotter half-way through an
//! operation: with `STRATA_SNAPSHOTTER_CRASH_AT=NAME` in its environment the
//! process sends itself SIGKILL when it reaches the point named NAME, exactly
//! as `kill -9` at that moment would. Without the variable a point costs one
//! comparison.
//!
//! The points: `prepare-dir` (new directory made under a temporary name),
//! `prepare-renamed` (directory in place, metadata not yet written),
//! `prepare-saved` (metadata written, reply not sent), `commit-saved`,
//! `remove-saved` (metadata written, directory still there),
//! `remove-renamed` (directory renamed for deletion, not deleted), and
//! `save-temp` (new metadata written to its temporary file, not renamed).

use std::sync::OnceLock;

/// The environment variable naming the point to crash at.
pub const CRASH_AT_ENV: &str = "STRATA_SNAPSHOTTER_CRASH_AT";

/// Kills the process with SIGKILL if `name` is the point it was told to
/// crash at.
pub(crate) fn point(name: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    if AT
        .get_or_init(|| std::env::var(CRASH_AT_ENV).ok())
        .as_deref()
        == Some(name)
    {
        tracing::warn!(point = name, "crash point reached: sending myself SIGKILL");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}
