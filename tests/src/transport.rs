//! Which FUSE transport the program under test serves with, and the switch
//! that lets it use FUSE over io_uring.
//!
//! A test binary whose name ends in `_uring` (the second entry point of a
//! suite, declared in `Cargo.toml` over the same source file), or any
//! binary run with `STRATA_TEST_URING=1`, mounts strata-mount with
//! `uring=on`: a mount that cannot use the ring fails instead of quietly
//! falling back. Such mounts hold an [`UringEnabled`] guard, which sets the
//! kernel's `enable_uring` parameter while any of them is alive and puts
//! back the value it found when the last one goes (tests in one binary run
//! in parallel: the guard is counted, process-wide).

use std::path::Path;
use std::sync::{Mutex, OnceLock};

/// The fuse module's switch for FUSE over io_uring (Linux 6.14+).
pub const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// Whether this test binary serves strata mounts over io_uring.
pub fn uring() -> bool {
    static URING: OnceLock<bool> = OnceLock::new();
    *URING.get_or_init(|| {
        if std::env::var_os("STRATA_TEST_URING").is_some_and(|v| v == "1") {
            return true;
        }
        std::env::current_exe()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            // target/debug/deps/differential_uring-0123abcd
            .is_some_and(|n| n.split('-').next().is_some_and(|s| s.ends_with("_uring")))
    })
}

/// The mount option that selects this binary's transport.
pub fn mount_option() -> &'static str {
    if uring() {
        "uring=on"
    } else {
        "uring=off"
    }
}

/// `enable_uring` is `Y` while one of these lives; the value found before
/// the first is restored when the last is dropped.
#[derive(Debug)]
pub struct UringEnabled(());

/// Live guards, and the value to restore after the last.
static STATE: Mutex<(usize, String)> = Mutex::new((0, String::new()));

impl UringEnabled {
    /// Sets `enable_uring` (or counts one more user if it is set). Panics
    /// with what to do if the kernel has no such parameter.
    pub fn acquire() -> UringEnabled {
        let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
        if state.0 == 0 {
            state.1 = std::fs::read_to_string(ENABLE_URING)
                .unwrap_or_else(|e| {
                    panic!(
                        "{ENABLE_URING}: {e}: this kernel has no FUSE over io_uring \
                         (CONFIG_FUSE_IO_URING, Linux 6.14+); run the *_uring tests on one that has"
                    )
                })
                .trim()
                .to_string();
            write(Path::new(ENABLE_URING), "Y");
        }
        state.0 += 1;
        UringEnabled(())
    }
}

impl Drop for UringEnabled {
    fn drop(&mut self) {
        let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
        state.0 -= 1;
        if state.0 == 0 && state.1 != "Y" {
            write(Path::new(ENABLE_URING), &state.1);
        }
    }
}

fn write(path: &Path, value: &str) {
    if let Err(e) = std::fs::write(path, value) {
        // Not a panic: this runs in Drop, maybe while unwinding.
        eprintln!(
            "cannot write {value} to {}: {e} (the tests run as root)",
            path.display()
        );
    }
}
