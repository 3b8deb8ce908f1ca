//! Crash-safe file operations: write-to-temp + fsync + rename, directory
//! fsync, temporary directories with a liveness lock, tree removal.
//!
//! Invariant: every file of the store is either absent or complete; a
//! temporary name is never read as data. A [`TempDir`] lives in the store's
//! `tmp/` next to a `NAME.lock` file that its owner holds with `flock`, so
//! `check` can tell a live import from debris left by a crash.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, IoContext, Result};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name unique to this process and call.
pub(crate) fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}{}-{n}-{t:08x}", std::process::id())
}

/// fsyncs a directory so that renames inside it are durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|f| f.sync_all()).ctx("fsync", dir)
}

/// Writes `bytes` to `dir/name` atomically: a temporary file in the same
/// directory, fsync, rename over the target, fsync of the directory.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!(".{}", unique_name(&format!("{name}.tmp-"))));
    let target = dir.join(name);
    let res = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .ctx("create", &tmp)?;
        f.write_all(bytes).ctx("write", &tmp)?;
        f.sync_all().ctx("fsync", &tmp)?;
        fs::rename(&tmp, &target).ctx("rename", &target)?;
        fsync_dir(dir)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Flushes every file of the filesystem holding `path` (one `syncfs`,
/// cheaper than an fsync per extracted file).
pub(crate) fn syncfs(path: &Path) -> Result<()> {
    let f = File::open(path).ctx("open", path)?;
    nix::unistd::syncfs(&f).map_err(|e| Error::io("syncfs", path, e.into()))
}

/// Removes a tree, making directories writable first if needed (a layer
/// may contain read-only directories).
pub(crate) fn remove_tree(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            make_writable(path);
            match fs::remove_dir_all(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(Error::io("remove", path, e))
                }
                _ => Ok(()),
            }
        }
    }
}

fn make_writable(path: &Path) {
    if let Ok(md) = fs::symlink_metadata(path) {
        if md.is_dir() {
            let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
            if let Ok(rd) = fs::read_dir(path) {
                for e in rd.flatten() {
                    make_writable(&e.path());
                }
            }
        }
    }
}

/// A scratch directory under the store's `tmp/`, removed on drop unless
/// [`TempDir::into_path`] took it. Its liveness lock is held until then.
pub(crate) struct TempDir {
    path: Option<PathBuf>,
    lock_path: PathBuf,
    _lock: Flock<File>,
}

impl TempDir {
    /// Creates `tmp_root/<unique>` and its held lock file.
    pub fn new(tmp_root: &Path) -> Result<TempDir> {
        let name = unique_name("t");
        let lock_path = tmp_root.join(format!("{name}.lock"));
        // The lock file appears under its name already locked (created and
        // locked under a dot-name, then renamed), so `check` never sees a
        // live temp dir with a free lock.
        let staging = tmp_root.join(format!(".{name}.lock"));
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&staging)
            .ctx("create", &staging)?;
        let lock = Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| Error::io("flock", &staging, e.into()))?;
        fs::rename(&staging, &lock_path).ctx("rename", &lock_path)?;
        let path = tmp_root.join(&name);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .ctx("mkdir", &path)?;
        Ok(TempDir {
            path: Some(path),
            lock_path,
            _lock: lock,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.path.as_deref().expect("temp dir already taken")
    }

    /// Marks the directory as moved away (renamed into the store): it will
    /// not be removed on drop.
    pub fn disarm(mut self) {
        self.path = None;
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            if let Err(e) = remove_tree(&p) {
                tracing::warn!(?e, path = %p.display(), "could not remove a temporary directory");
            }
        }
        let _ = fs::remove_file(&self.lock_path);
    }
}

use std::os::unix::fs::DirBuilderExt;

/// A temporary file under `tmp/` (for spooled stdin, generated tars),
/// removed on drop.
pub(crate) struct TempFile {
    dir: TempDir,
    path: PathBuf,
}

impl TempFile {
    pub fn new(tmp_root: &Path) -> Result<(TempFile, File)> {
        let dir = TempDir::new(tmp_root)?;
        let path = dir.path().join("data");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .ctx("create", &path)?;
        Ok((TempFile { dir, path }, f))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    #[allow(dead_code)]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
