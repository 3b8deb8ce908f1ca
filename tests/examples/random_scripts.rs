//! Runs more generated lockstep scripts than the test suite does, to hunt
//! for differences: `cargo run -p strata-tests --example random_scripts --
//! FIRST_SEED LAST_SEED [OPS]` (as root; honors `STRATA_MOUNT`). Stops at
//! the first seed that differs from the kernel and prints its script.

use strata_tests::ops::differential_lockstep;
use strata_tests::random::{layers, random_script};

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers: FIRST LAST [OPS]"))
        .collect();
    let (first, last) = (
        args.first().copied().unwrap_or(100),
        args.get(1).copied().unwrap_or(199),
    );
    let ops = args.get(2).copied().unwrap_or(400) as usize;
    for seed in first..=last {
        differential_lockstep(&layers(), &random_script(seed, ops), 25, Some(100));
        println!("seed {seed}: same as the kernel");
    }
}
