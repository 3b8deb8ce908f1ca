//! The hidden commands `strata` runs itself: `__supervise` (a container's
//! supervisor) and `__serve-mount` (the daemon behind `mount` and `image
//! mount`).

use anyhow::Result;

use super::Ctx;
use crate::cli::{ServeMountArgs, SuperviseArgs};
use crate::mounts;
use crate::supervisor::{self, Mode};

/// `__supervise`: runs until the container is gone; its exit code.
pub(super) fn supervise(ctx: &Ctx, a: &SuperviseArgs) -> Result<i32> {
    let mode = if a.detach {
        Mode::Detached
    } else {
        Mode::Attached
    };
    Ok(supervisor::supervise(&ctx.root, &a.id, mode))
}

/// `__serve-mount`: serves the mount until it is unmounted.
pub(super) fn serve_mount(a: ServeMountArgs) -> Result<i32> {
    let up = a.upper.zip(a.work);
    // `image mount` and `mount` are for the host's eyes: an
    // image's setuid programs and device nodes mean nothing there.
    let opts = strata_fs::MountOptions {
        nosuid: true,
        nodev: true,
        ..mounts::options(a.lowers, up)
    };
    Ok(supervisor::serve_mount(opts, &a.dir))
}
