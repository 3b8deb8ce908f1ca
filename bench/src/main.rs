//! `strata-bench`: the command line of the storage-driver benchmark.

use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;
use strata_bench::dataset::Sizes;
use strata_bench::driver::{self, DriverSpec};
use strata_bench::workload::{self, Workload};
use strata_bench::{report, runner, Config};

/// Benchmarks Strata against the kernel's overlayfs, fuse-overlayfs and a
/// plain directory. Runs as root.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Drivers, comma-separated: strata, kernel, fuse-overlayfs, native,
    /// prog:/path/to/mount-program; any may take extra mount options after
    /// a '+' (strata+metacopy=on, prog:/opt/strata-mount+threads=4).
    /// strata+uring=on serves over FUSE over io_uring (the run sets the
    /// kernel's enable_uring and restores it), strata+uring=off over
    /// /dev/fuse.
    #[arg(long, default_value = driver::DEFAULT_DRIVERS)]
    drivers: String,
    /// Workloads, comma-separated, or `all` (see --list).
    #[arg(long, default_value = "all")]
    workloads: String,
    /// Rounds; each runs every workload once with every driver.
    #[arg(long)]
    rounds: Option<usize>,
    /// Where data sets are generated and reused from.
    #[arg(long, default_value = "/var/tmp/strata-bench")]
    data: PathBuf,
    /// Where results.md, samples.csv and ratios.svg are written.
    #[arg(long, default_value = "strata-bench-results")]
    out: PathBuf,
    /// The strata-mount program (default: next to strata-bench).
    #[arg(long, env = "STRATA_MOUNT")]
    strata: Option<PathBuf>,
    /// Every workload at tiny sizes, one round, every available driver;
    /// fails unless each workload ran and nothing was left mounted.
    #[arg(long)]
    quick: bool,
    /// Generate the data sets the workloads need, then exit.
    #[arg(long)]
    generate: bool,
    /// List the workloads and exit.
    #[arg(long)]
    list: bool,
    /// No progress line.
    #[arg(long)]
    no_progress: bool,
}

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<()> {
    let args = Args::parse();
    let sizes = if args.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    };
    if args.list {
        for w in Workload::ALL {
            println!("{:<15} {}", w.name(), w.describe(&sizes));
        }
        return Ok(());
    }
    let drivers: Vec<DriverSpec> = driver::parse_list(&args.drivers).context("--drivers")?;
    let workloads = workload::parse_list(&args.workloads).context("--workloads")?;
    let rounds = args.rounds.unwrap_or(if args.quick { 1 } else { 5 });
    if rounds == 0 || workloads.is_empty() || drivers.is_empty() {
        bail!("nothing to run: give at least one round, workload and driver");
    }
    let strata = match args.strata {
        Some(p) => p,
        None => std::env::current_exe()
            .context("locating strata-bench")?
            .with_file_name("strata-mount"),
    };
    let cfg = Config {
        drivers,
        workloads,
        rounds,
        data_dir: args.data,
        sizes,
        strata,
        progress: !args.no_progress,
    };
    if args.generate {
        runner::generate(&cfg)?;
        eprintln!(
            "strata-bench: data sets ready in {}",
            cfg.data_dir.display()
        );
        return Ok(());
    }
    let results = runner::run(&cfg)?;

    let md = report::markdown(&results);
    fs::create_dir_all(&args.out).with_context(|| format!("mkdir {}", args.out.display()))?;
    for (name, text) in [
        ("results.md", md.clone()),
        ("samples.csv", report::csv(&results)),
        ("ratios.svg", report::svg(&results)),
    ] {
        let p = args.out.join(name);
        fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    println!("{md}");
    eprintln!(
        "strata-bench: wrote results.md, samples.csv and ratios.svg to {}",
        args.out.display()
    );
    if args.quick {
        runner::verify(&results)?;
        eprintln!(
            "strata-bench: quick check passed: {} workloads × {} drivers ran, nothing left mounted",
            results.workloads.len(),
            results.drivers.len()
        );
    } else if !results.failures.is_empty() {
        bail!("{} runs failed (see the notes)", results.failures.len());
    }
    Ok(())
}
