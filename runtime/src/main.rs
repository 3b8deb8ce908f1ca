//! `strata`: the command line. Parsing and dispatch live in
//! `strata_runtime::cli`; this only exits with its code.

fn main() {
    std::process::exit(strata_runtime::cli::main());
}
