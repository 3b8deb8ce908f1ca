//! The run loop: interleaved rounds, each running every workload once with
//! every driver, in an order that rotates from round to round so that the
//! shared machine's drift hits all drivers alike.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use crate::dataset::{self, DataSet, Sizes, Stack, StackId};
use crate::driver::{Driver, DriverSpec, MountRequest};
use crate::error::{io_err, BenchError, Result};
use crate::process;
use crate::progress::Progress;
use crate::sys;
use crate::workload::{Ctx, Inputs, Workload};

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    pub drivers: Vec<DriverSpec>,
    pub workloads: Vec<Workload>,
    pub rounds: usize,
    /// Where data sets live (and are reused from).
    pub data_dir: PathBuf,
    pub sizes: Sizes,
    /// The `strata-mount` program for the `strata` driver.
    pub strata: PathBuf,
    /// Show a progress line when stderr is a terminal.
    pub progress: bool,
}

/// One timed run.
#[derive(Debug, Clone)]
pub struct Sample {
    pub workload: Workload,
    pub driver: String,
    /// Round number, from 0.
    pub round: usize,
    /// Position of the driver in this round's order, from 0.
    pub position: usize,
    pub seconds: f64,
    /// Peak RSS of the FUSE server during the run, KiB.
    pub peak_rss_kib: Option<u64>,
    /// Disk space used by the upper layer after the run, bytes.
    pub upper_bytes: Option<u64>,
}

/// A run that did not complete.
#[derive(Debug, Clone)]
pub struct Failure {
    pub workload: Workload,
    pub driver: String,
    pub round: usize,
    pub message: String,
}

/// Everything a run measured.
#[derive(Debug, Clone)]
pub struct Results {
    /// Driver names, in the order given.
    pub drivers: Vec<String>,
    pub workloads: Vec<Workload>,
    pub rounds: usize,
    pub sizes: Sizes,
    pub samples: Vec<Sample>,
    pub failures: Vec<Failure>,
    /// Drivers skipped and other remarks.
    pub notes: Vec<String>,
    pub started: SystemTime,
    /// The directory mounts were made under (gone after the run).
    pub scratch_root: PathBuf,
}

/// Generates (or finds) the data sets, then runs `cfg.rounds` rounds.
/// A failing run is recorded and the others go on; Ctrl-C stops at the
/// next step with every mount cleaned up.
pub fn run(cfg: &Config) -> Result<Results> {
    if !sys::is_root() {
        return Err(BenchError::NotRoot);
    }
    sys::catch_interrupts();
    let _uring = if cfg.drivers.iter().any(DriverSpec::wants_uring)
        && Path::new(sys::ENABLE_URING).exists()
    {
        Some(sys::UringSwitch::on()?)
    } else {
        None
    };
    let mut notes = Vec::new();
    let mut progress = Progress::new(0, false);
    let note = |p: &mut Progress, notes: &mut Vec<String>, msg: String| {
        p.note(&msg);
        notes.push(msg);
    };

    let mut drivers: Vec<Box<dyn Driver>> = Vec::new();
    for spec in &cfg.drivers {
        match spec.resolve(&cfg.strata) {
            Ok(d) => drivers.push(d),
            Err(why) => note(&mut progress, &mut notes, format!("skipping driver {why}")),
        }
    }
    if drivers.is_empty() {
        return Err(BenchError::NoDrivers);
    }
    let data = DataSet::new(&cfg.data_dir, cfg.sizes.clone());
    let (stacks, inputs) = prepare_data(&data, &cfg.workloads, &mut progress)?;

    progress.note("reading the data sets once, so that no driver pays for the host's disk");
    for stack in stacks.values() {
        dataset::read_tree(&stack.dir)?;
    }
    if let Some(t) = &inputs.tarball {
        dataset::read_tree(t.parent().unwrap_or(t))?;
    }

    let scratch_root = data.root.join(format!("run-{}", std::process::id()));
    dataset::remove_all(&scratch_root)?;
    fs::create_dir_all(&scratch_root).map_err(io_err("mkdir", &scratch_root))?;
    let _cleanup = ScratchRoot(scratch_root.clone());

    let mut results = Results {
        drivers: drivers.iter().map(|d| d.name().to_string()).collect(),
        workloads: cfg.workloads.clone(),
        rounds: cfg.rounds,
        sizes: cfg.sizes.clone(),
        samples: Vec::new(),
        failures: Vec::new(),
        notes,
        started: SystemTime::now(),
        scratch_root: scratch_root.clone(),
    };
    let total = cfg.rounds * cfg.workloads.len() * drivers.len();
    let mut progress = Progress::new(total, cfg.progress);
    let mut n = 0usize;
    for round in 0..cfg.rounds {
        for (wi, &w) in cfg.workloads.iter().enumerate() {
            let order = rotation(drivers.len(), round + wi);
            for (position, &di) in order.iter().enumerate() {
                if sys::interrupted() {
                    progress.finish();
                    return Err(BenchError::Interrupted);
                }
                let driver = &drivers[di];
                progress.step(&format!(
                    "round {}/{} {w} {}",
                    round + 1,
                    cfg.rounds,
                    driver.name()
                ));
                let scratch = scratch_root.join(format!("{n:05}"));
                n += 1;
                let outcome = run_one_anywhere(
                    driver.as_ref(),
                    w,
                    &stacks[&w.stack()],
                    &inputs,
                    &cfg.sizes,
                    &scratch,
                );
                progress.advance();
                match outcome {
                    Ok(mut s) => {
                        s.round = round;
                        s.position = position;
                        results.samples.push(s);
                    }
                    Err(e) => {
                        if sys::interrupted() {
                            progress.finish();
                            return Err(BenchError::Interrupted);
                        }
                        let f = Failure {
                            workload: w,
                            driver: driver.name().to_string(),
                            round,
                            message: e.to_string(),
                        };
                        progress.note(&format!("{w} with {} failed: {}", f.driver, f.message));
                        results.failures.push(f);
                    }
                }
            }
        }
    }
    progress.finish();
    progress.note("removing the runs' upper layers");
    Ok(results)
}

/// Removes the directory every run's scratch directory was made in when
/// the run loop ends in any way (unless something is still mounted there:
/// never delete through a mount).
struct ScratchRoot(PathBuf);

impl Drop for ScratchRoot {
    fn drop(&mut self) {
        if process::mounts_under(&self.0).is_empty() {
            if let Err(e) = dataset::remove_all(&self.0) {
                eprintln!("strata-bench: cleanup: {e}");
            }
        } else {
            eprintln!(
                "strata-bench: cleanup: something is still mounted under {}; left it there",
                self.0.display()
            );
        }
    }
}

/// Generates (or finds) the data sets `cfg.workloads` need, without
/// running anything: `strata-bench --generate`.
pub fn generate(cfg: &Config) -> Result<()> {
    if !sys::is_root() {
        return Err(BenchError::NotRoot);
    }
    sys::catch_interrupts();
    let data = DataSet::new(&cfg.data_dir, cfg.sizes.clone());
    prepare_data(&data, &cfg.workloads, &mut Progress::new(0, false)).map(drop)
}

fn prepare_data(
    data: &DataSet,
    workloads: &[Workload],
    progress: &mut Progress,
) -> Result<(BTreeMap<StackId, Stack>, Inputs)> {
    dataset::check_tools()?;
    let mut stacks: BTreeMap<StackId, Stack> = BTreeMap::new();
    let mut inputs = Inputs::default();
    for w in workloads {
        if let std::collections::btree_map::Entry::Vacant(e) = stacks.entry(w.stack()) {
            e.insert(data.stack(w.stack(), &mut |m| progress.note(m))?);
        }
        match w {
            Workload::Tarx => inputs.tarball = Some(data.tarball(&mut |m| progress.note(m))?),
            Workload::UnlinkStorm => {
                let manifest = stacks[&StackId::L16].manifest()?;
                inputs.unlink = Workload::unlink_list(&manifest, data.sizes.storm_files);
            }
            _ => {}
        }
        if sys::interrupted() {
            return Err(BenchError::Interrupted);
        }
    }
    Ok((stacks, inputs))
}

/// Indexes `0..n` rotated left by `by`.
pub fn rotation(n: usize, by: usize) -> Vec<usize> {
    (0..n).map(|i| (i + by) % n.max(1)).collect()
}

/// [`run_one`], in a child process in a user namespace of its own for an
/// `@userns` driver. Whatever that child left running under `scratch` (a
/// FUSE server whose unmount failed holds the namespace and its mount
/// alive) is killed, and the run fails.
fn run_one_anywhere(
    driver: &dyn Driver,
    w: Workload,
    stack: &Stack,
    inputs: &Inputs,
    sizes: &Sizes,
    scratch: &Path,
) -> Result<Sample> {
    if !driver.userns() {
        return run_one(driver, w, stack, inputs, sizes, scratch);
    }
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    let reply = sys::in_userns(|| {
        run_one(driver, w, stack, inputs, sizes, scratch)
            .map(|s| {
                format!(
                    "{} {} {}",
                    s.seconds,
                    opt(s.peak_rss_kib),
                    opt(s.upper_bytes)
                )
            })
            .map_err(|e| e.to_string())
    });
    let fail = |reason: String| BenchError::Userns {
        driver: driver.name().to_string(),
        reason,
    };
    let left = process::pids_with_arg_under(scratch);
    if !left.is_empty() {
        for &pid in &left {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        return Err(fail(format!("processes left behind, killed: {left:?}")));
    }
    let reply = reply.map_err(fail)?;
    let parsed = (|| {
        let mut f = reply.split(' ');
        let seconds: f64 = f.next()?.parse().ok()?;
        let num = |x: Option<&str>| -> Option<Option<u64>> {
            match x? {
                "-" => Some(None),
                v => v.parse().ok().map(Some),
            }
        };
        let peak_rss_kib = num(f.next())?;
        let upper_bytes = num(f.next())?;
        Some(Sample {
            workload: w,
            driver: driver.name().to_string(),
            round: 0,
            position: 0,
            seconds,
            peak_rss_kib,
            upper_bytes,
        })
    })();
    parsed.ok_or_else(|| fail(format!("unreadable reply {reply:?}")))
}

fn run_one(
    driver: &dyn Driver,
    w: Workload,
    stack: &Stack,
    inputs: &Inputs,
    sizes: &Sizes,
    scratch: &Path,
) -> Result<Sample> {
    fs::create_dir_all(scratch).map_err(io_err("mkdir", scratch))?;
    let req = MountRequest {
        stack,
        scratch,
        native: w.native_setup(),
    };
    let (guard, seconds) = if w.is_mount() {
        if w.cold() {
            sys::drop_caches()?;
        } else {
            sys::sync();
        }
        // Timed: the mount until its root answers the workload's stat.
        let (guard, took) = driver.mount_probed(&req, &mut |root| {
            w.run(&Ctx {
                root,
                sizes,
                inputs,
            })
        })?;
        (guard, took.as_secs_f64())
    } else {
        let guard = driver.mount(&req)?;
        let cx = Ctx {
            root: guard.root(),
            sizes,
            inputs,
        };
        w.prepare(&cx)?;
        if w.cold() {
            sys::drop_caches()?;
        } else {
            sys::sync();
        }
        let t0 = Instant::now();
        w.run(&cx)?;
        let secs = t0.elapsed().as_secs_f64();
        (guard, secs)
    };
    let peak_rss_kib = if driver.is_fuse() {
        guard.server_peak_rss_kib()
    } else {
        None
    };
    let upper_bytes = match guard.upper() {
        Some(u) if w.reports_upper() => Some(dataset::disk_usage(u)?),
        _ => None,
    };
    guard.unmount()?;
    Ok(Sample {
        workload: w,
        driver: driver.name().to_string(),
        round: 0,
        position: 0,
        seconds,
        peak_rss_kib,
        upper_bytes,
    })
}

/// The `--quick` checks: every workload ran with every driver, nothing
/// failed, and no mount or FUSE server of the run is left.
pub fn verify(results: &Results) -> Result<()> {
    let mut problems = Vec::new();
    for f in &results.failures {
        problems.push(format!(
            "{} with {} failed: {}",
            f.workload, f.driver, f.message
        ));
    }
    for &w in &results.workloads {
        for d in &results.drivers {
            if !results
                .samples
                .iter()
                .any(|s| s.workload == w && &s.driver == d)
            {
                problems.push(format!("{w} did not run with {d}"));
            }
        }
    }
    let mounts = process::mounts_under(&results.scratch_root);
    if !mounts.is_empty() {
        problems.push(format!("mounts left behind: {}", mounts.join(", ")));
    }
    let pids = process::pids_with_arg_under(&results.scratch_root);
    if !pids.is_empty() {
        problems.push(format!("processes left behind: {pids:?}"));
    }
    if results.scratch_root.exists() {
        problems.push(format!(
            "scratch directory {} was not removed",
            results.scratch_root.display()
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(BenchError::Check(problems.join("\n")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_puts_every_driver_first_in_turn() {
        assert_eq!(rotation(3, 0), [0, 1, 2]);
        assert_eq!(rotation(3, 1), [1, 2, 0]);
        assert_eq!(rotation(3, 5), [2, 0, 1]);
        assert_eq!(rotation(1, 7), [0]);
    }
}
