//! strata-bench: storage-driver benchmarks (issue 5; not built yet).
