//! The `differential` suite again, with strata-mount serving over FUSE over
//! io_uring (`uring=on`, `enable_uring` set for the run and restored): a
//! test binary whose name ends in `_uring` selects that transport (see
//! `strata_tests::transport`).

#[path = "differential.rs"]
mod suite;
