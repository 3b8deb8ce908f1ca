//! Generated scripts: a seeded random mix of every operation over a small
//! set of names that exist in lowers, the upper, both or neither, run in
//! lockstep on the kernel's overlayfs and on the program under test
//! (`differential_lockstep`). Deterministic: a seed always gives the same
//! script, and a failure prints the script up to the first difference.

use strata_tests::ops::differential_lockstep;
use strata_tests::random::{layers, random_script};

fn run(seed: u64) {
    differential_lockstep(&layers(), &random_script(seed, 400), 25, Some(100));
}

macro_rules! seeds {
    ($($name:ident = $seed:expr),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run($seed);
            }
        )*
    };
}

seeds!(
    random_script_seed_1 = 1,
    random_script_seed_2 = 2,
    random_script_seed_3 = 3,
    random_script_seed_4 = 4,
    random_script_seed_5 = 5,
    random_script_seed_6 = 6,
    random_script_seed_7 = 7,
    random_script_seed_8 = 8,
    random_script_seed_9 = 9,
    random_script_seed_10 = 10,
    random_script_seed_11 = 11,
    random_script_seed_12 = 12,
);
