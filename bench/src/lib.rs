//! strata-bench: the storage-driver benchmark. It mounts the same
//! generated layer stacks with Strata (`strata-mount`), the kernel's
//! overlayfs, fuse-overlayfs, any fuse-overlayfs-compatible program, and a
//! plain directory (`native`), runs the same workloads on each in
//! interleaved rounds, and reports medians, per-round ratios to the kernel,
//! FUSE server memory and upper-layer sizes.
//!
//! - [`dataset`]: deterministic data sets, generated once and reused.
//! - [`driver`]: the [`driver::Driver`] trait and the guard that unmounts.
//! - [`workload`]: what each workload prepares and times.
//! - [`runner`]: rounds, rotation, samples; the `--quick` checks.
//! - [`report`]: Markdown, CSV and SVG.
//!
//! Invariant: no mount or FUSE server outlives the run that made it, even
//! when a workload fails, panics or the user presses Ctrl-C.

#![deny(unsafe_code)]

pub mod dataset;
pub mod driver;
pub mod error;
pub mod process;
pub mod progress;
pub mod report;
pub mod runner;
mod sys;
pub mod workload;

pub use error::{BenchError, Result};
pub use runner::{run, verify, Config, Results};
