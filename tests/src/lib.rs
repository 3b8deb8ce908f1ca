//! Shared helpers for Strata's integration tests: layer-stack fixtures and
//! mount guards.
