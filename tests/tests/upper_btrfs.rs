//! The `differential` suite with the upper and work directories on btrfs
//! (a binary named `upper_KIND` selects it; see `strata_tests::upperfs`),
//! each case as root and again inside a user namespace.

#[path = "differential.rs"]
mod suite;
