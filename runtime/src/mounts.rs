//! Mounting layer stacks with strata-fs: a mount served by threads of this
//! process for as long as a guard lives ([`ServedMount`]), and the
//! long-lived mount daemon behind `strata image mount` and `strata mount`.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use strata_fs::{MountError, MountOptions, Mounted};

/// Options for a stack: `lowers` top first; with `upper` (and its `work`)
/// the mount is writable, else read-only.
pub fn options(lowers: Vec<PathBuf>, upper: Option<(PathBuf, PathBuf)>) -> MountOptions {
    let (upper, work) = match upper {
        Some((u, w)) => (Some(u), Some(w)),
        None => (None, None),
    };
    MountOptions {
        lowers,
        upper,
        work,
        passthrough: true,
        ..Default::default()
    }
}

/// A mount served by a thread of this process; unmounted (and the thread
/// joined) on drop.
pub struct ServedMount {
    path: PathBuf,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl ServedMount {
    /// Mounts and starts serving.
    pub fn mount(opts: MountOptions, at: &Path) -> Result<ServedMount, MountError> {
        let m = Mounted::mount(opts, at)?;
        let path = m.mountpoint().to_path_buf();
        let thread = std::thread::Builder::new()
            .name("strata-fuse".into())
            .spawn(move || m.run())
            .map_err(MountError::Handshake)?;
        Ok(ServedMount {
            path,
            thread: Some(thread),
        })
    }

    /// Takes over a mount already made (the supervisor mounts before it
    /// forks, and serves after).
    pub fn serve(m: Mounted) -> std::io::Result<ServedMount> {
        let path = m.mountpoint().to_path_buf();
        let thread = std::thread::Builder::new()
            .name("strata-fuse".into())
            .spawn(move || m.run())?;
        Ok(ServedMount {
            path,
            thread: Some(thread),
        })
    }

    /// The mountpoint.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves until someone else unmounts the mount.
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Unmounts and waits for the server to finish.
    pub fn unmount(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        if let Some(t) = self.thread.take() {
            if let Err(e) = strata_fs::unmount(&self.path) {
                tracing::warn!(path = %self.path.display(), ?e, "unmount failed");
            }
            let _ = t.join();
        }
    }
}

impl Drop for ServedMount {
    fn drop(&mut self) {
        self.finish();
    }
}
