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
    done: std::sync::mpsc::Receiver<()>,
}

/// How long an unmount waits for the server to see the mount go. A mount
/// still in use (a shell's working directory in it) keeps its server busy;
/// after this the server is left to the process's exit, which aborts the
/// connection (users of the detached mount then get ENOTCONN).
const UNMOUNT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn spawn_server(m: Mounted) -> std::io::Result<ServedMount> {
    let path = m.mountpoint().to_path_buf();
    let (tx, done) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("strata-fuse".into())
        .spawn(move || {
            let r = m.run();
            let _ = tx.send(());
            r
        })?;
    Ok(ServedMount {
        path,
        thread: Some(thread),
        done,
    })
}

impl ServedMount {
    /// Mounts and starts serving.
    pub fn mount(opts: MountOptions, at: &Path) -> Result<ServedMount, MountError> {
        let m = Mounted::mount(opts, at)?;
        let path = m.mountpoint().to_path_buf();
        spawn_server(m).map_err(|e| {
            let _ = strata_fs::unmount(&path);
            MountError::Handshake(e)
        })
    }

    /// Takes over a mount already made (the supervisor mounts before it
    /// forks, and serves after).
    pub fn serve(m: Mounted) -> std::io::Result<ServedMount> {
        spawn_server(m)
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
            if self.done.recv_timeout(UNMOUNT_WAIT).is_ok() {
                let _ = t.join();
            } else {
                tracing::warn!(path = %self.path.display(), "mount still in use; leaving its server");
            }
        }
    }
}

impl Drop for ServedMount {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn process_umask() -> String {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Serving a mount in threads left the whole process with umask 0, so
    /// the supervisor made its files and libcontainer's cgroup directories
    /// world-writable (bundle 0777, config.json 0666, /sys/fs/cgroup/*/strata
    /// 0777). The server threads now have a umask of their own, and files
    /// made through the mount still get exactly the modes asked for.
    #[test]
    fn serving_a_mount_leaves_the_process_umask_alone() {
        let d = tempfile::tempdir().unwrap();
        for s in ["lower", "upper", "work", "m"] {
            std::fs::create_dir(d.path().join(s)).unwrap();
        }
        crate::sys::set_umask(0o022);
        let opts = options(
            vec![d.path().join("lower")],
            Some((d.path().join("upper"), d.path().join("work"))),
        );
        let served = ServedMount::mount(opts, &d.path().join("m")).unwrap();
        let ok = std::process::Command::new("sh")
            .arg("-c")
            .arg("umask 000 && mkdir \"$0/d\" && touch \"$0/f\"")
            .arg(d.path().join("m"))
            .status()
            .unwrap()
            .success();
        let umask = process_umask();
        served.unmount();
        assert!(ok);
        assert_eq!(umask, "0022");
        let mode = |p: &str| {
            std::fs::metadata(d.path().join("upper").join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!((mode("d"), mode("f")), (0o777, 0o666));
    }
}
