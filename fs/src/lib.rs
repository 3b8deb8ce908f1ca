//! strata-fs: Strata's FUSE union filesystem.
//!
//! Stacks read-only lower directories under one writable upper directory
//! with overlayfs semantics (copy-up, whiteouts, opaque directories, merged
//! readdir), so layer directories move freely between Strata, the kernel's
//! overlayfs, fuse-overlayfs and containers/storage.
//!
//! The entry points: [`MountOptions`] (parsed from fuse-overlayfs's `-o`
//! string), [`Mounted::mount`] to mount, and [`Mounted::run`] to serve until
//! the mount goes away. The `strata-mount` program wraps them with
//! fuse-overlayfs's command line.
//!
//! Invariants: only the upper layer is ever written; every path is resolved
//! relative to a layer's directory fd; no `unsafe` outside [`sys`].
#![deny(unsafe_code)]

pub(crate) mod copyup;
pub(crate) mod dircache;
pub(crate) mod faults;
pub(crate) mod fuse;
pub(crate) mod hardlink;
pub(crate) mod ids;
pub(crate) mod io;
pub(crate) mod layers;
pub(crate) mod lookup;
pub(crate) mod namespace;
pub(crate) mod nodes;
pub(crate) mod options;
pub(crate) mod overlay;
pub(crate) mod ownership;
/// Paths relative to a layer root (the format crate's [`strata_ovl::RelPath`]).
pub(crate) mod path {
    pub use strata_ovl::RelPath;
}
pub(crate) mod prune;
pub(crate) mod readdir;
pub(crate) mod rename;
pub(crate) mod setattr;
pub(crate) mod stats;
pub mod sys;
pub(crate) mod xattr;

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{Config, Session, SessionACL};
use nix::errno::Errno;

pub use crate::options::{MountOptions, OptionsError, Uring};
pub use crate::overlay::Overlay;

/// Why a mount could not be made. Each message names the path and the fix.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error(transparent)]
    Options(#[from] OptionsError),
    #[error(transparent)]
    Stack(#[from] layers::StackError),
    #[error("mountpoint {0}: {1}")]
    Mountpoint(PathBuf, String),
    #[error("{kind} {dir} is inside the mountpoint {mnt}; layers must live outside it")]
    InsideMountpoint {
        kind: &'static str,
        dir: PathBuf,
        mnt: PathBuf,
    },
    #[error("the mountpoint {mnt} is inside the {kind} {dir}: the server would look itself up; mount outside the layers")]
    MountpointInsideLayer {
        kind: &'static str,
        dir: PathBuf,
        mnt: PathBuf,
    },
    #[error("{kind} {dir} is in use by another live mount; unmount that one first (two mounts sharing an upperdir or workdir corrupt each other)")]
    InUse { kind: &'static str, dir: PathBuf },
    #[error("cannot open /dev/fuse: {0}; the fuse module must be loaded and /dev/fuse readable and writable by the user (mode 0666, as Debian's fuse3 package makes it)")]
    Device(Errno),
    #[error("mount of {0} failed: {1}")]
    Mount(PathBuf, Errno),
    #[error("FUSE handshake failed: {0}")]
    Handshake(std::io::Error),
    #[error("cannot set up the filesystem: {0}")]
    Setup(Errno),
    #[error("the upper filesystem cannot be written: making a directory in the workdir {0} failed: {1}; give upperdir and workdir on a writable filesystem")]
    UpperUnusable(PathBuf, Errno),
}

/// A live mount whose server has not started serving yet.
pub struct Mounted {
    session: Session<fuse::StrataFs>,
    /// What each FUSE transport served (see [`Mounted::transport`]).
    transport: Arc<fuser::TransportStats>,
    mountpoint: PathBuf,
    overlay: Arc<Overlay>,
    threads: usize,
    /// Kept open while serving: fusermount3 unmounts when it closes.
    fusermount: Option<OwnedFd>,
    /// The locks on the upper and work directories (see [`lock_layers`]).
    _locks: Vec<OwnedFd>,
}

impl std::fmt::Debug for Mounted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mounted")
            .field("mountpoint", &self.mountpoint)
            .finish()
    }
}

fn canonical(kind: &'static str, p: &Path) -> Result<PathBuf, MountError> {
    p.canonicalize().map_err(|e| match e.raw_os_error() {
        Some(code) => MountError::Stack(layers::StackError::Open {
            kind,
            path: p.to_path_buf(),
            err: Errno::from_raw(code),
        }),
        None => MountError::Mountpoint(p.to_path_buf(), e.to_string()),
    })
}

/// A mount whose FUSE handshake has not happened yet. No thread exists at
/// this stage, so a program may still fork and serve from the child (the
/// kernel holds requests, the handshake first, until a server answers).
///
/// Dropping it without [`Prepared::handshake`] leaves a mount whose server
/// is gone; use [`unmount`] on its mountpoint.
pub struct Prepared {
    dev: OwnedFd,
    mountpoint: PathBuf,
    overlay: Arc<Overlay>,
    threads: usize,
    /// The socket to fusermount3 for a mount it made (see
    /// [`sys::mount_fuse_fusermount`]).
    fusermount: Option<OwnedFd>,
    /// The locks on the upper and work directories (see [`lock_layers`]).
    locks: Vec<OwnedFd>,
}

/// How long a mount waits for the lock of an upper or work directory that
/// another server holds: long enough for a server whose mount was just
/// unmounted to exit (it takes milliseconds), short enough to refuse a
/// live one quickly.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Takes exclusive locks on the upper and work directories for the mount's
/// life, as the kernel's overlayfs marks them in use: a second live mount
/// sharing either is refused ([`MountError::InUse`]). The locks belong to
/// the returned fds (`flock`), so a server forked after the mount keeps
/// them, and they go when its last copy of the fds closes, at its exit.
/// Taken before the work directory is emptied of leftovers, which would
/// destroy another mount's copy-ups in flight. A directory that cannot be
/// locked at all (a filesystem without `flock`) is mounted unlocked, with a
/// warning, as before.
fn lock_layers(
    roots: &layers::Roots,
    upper: Option<&Path>,
    work: Option<&Path>,
) -> Result<Vec<OwnedFd>, MountError> {
    let mut locks = Vec::new();
    let dirs = [
        ("upperdir", upper.zip(roots.upper())),
        (
            "workdir",
            work.filter(|w| Some(*w) != upper).zip(roots.work()),
        ),
    ];
    for (kind, dir) in dirs {
        let Some((dir, fd)) = dir else { continue };
        let start = std::time::Instant::now();
        let fd = loop {
            match sys::lock_dir(fd) {
                Ok(fd) => break Some(fd),
                Err(Errno::EWOULDBLOCK) if start.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(Errno::EWOULDBLOCK) => {
                    return Err(MountError::InUse {
                        kind,
                        dir: dir.to_path_buf(),
                    })
                }
                Err(err) => {
                    tracing::warn!(%err, dir = %dir.display(), kind, "cannot lock; a second mount of it will not be refused");
                    break None;
                }
            }
        };
        locks.extend(fd);
    }
    Ok(locks)
}

/// fusermount3's option string for a mount with `flags`. It unmounts when
/// the server ends (`auto_unmount`), since the server may not unmount
/// itself; `allow_other` only where /etc/fuse.conf allows it.
fn fusermount_options(flags: u64) -> String {
    let mut o = vec![
        "fsname=strata",
        "subtype=strata",
        "default_permissions",
        "auto_unmount",
    ];
    if sys::fuse_conf_allows_other() {
        o.push("allow_other");
    }
    for (flag, name) in [
        (libc::MS_NOSUID, "nosuid"),
        (libc::MS_NODEV, "nodev"),
        (libc::MS_NOEXEC, "noexec"),
        (libc::MS_NOATIME, "noatime"),
        (libc::MS_RDONLY, "ro"),
    ] {
        if flags & flag != 0 {
            o.push(name);
        }
    }
    o.join(",")
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("mountpoint", &self.mountpoint)
            .finish()
    }
}

/// The CPUs this process may run on. (`sched_getaffinity` is one system
/// call; the standard library's `available_parallelism` also reads cgroup
/// files, which shows in the time a mount takes.)
fn cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| {
        nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
            .map(|set| {
                (0..nix::sched::CpuSet::count())
                    .filter(|&c| set.is_set(c).unwrap_or(false))
                    .count()
            })
            .unwrap_or(1)
            .max(1)
    })
}

/// Worker threads by default: one per CPU, at least 2.
fn default_threads() -> usize {
    cpus().max(2)
}

/// An empty concurrent map with dashmap's usual number of shards (four per
/// CPU), counted without `available_parallelism` (see [`cpus`]).
pub(crate) fn new_map<K: Eq + std::hash::Hash, V>() -> dashmap::DashMap<K, V> {
    dashmap::DashMap::with_shard_amount((cpus() * 4).next_power_of_two().max(2))
}

impl Prepared {
    /// Opens the layers of `opts` and mounts them at `mountpoint`. The
    /// mount is live: requests wait until a server completes the handshake
    /// ([`Prepared::handshake`]) and serves them. On error nothing is left
    /// mounted.
    ///
    /// The process umask is left alone: each server thread gets a umask of
    /// its own, 0, at its first request (`sys::thread_umask_zero`).
    pub fn mount(opts: MountOptions, mountpoint: &Path) -> Result<Prepared, MountError> {
        opts.validate()?;
        let mnt = mountpoint
            .canonicalize()
            .map_err(|e| MountError::Mountpoint(mountpoint.to_path_buf(), e.to_string()))?;
        if !mnt.is_dir() {
            return Err(MountError::Mountpoint(mnt, "not a directory".into()));
        }
        let mut opts = opts;
        let mut lowers = Vec::new();
        for l in &opts.lowers {
            let c = canonical("lowerdir", l)?;
            if c.starts_with(&mnt) {
                return Err(MountError::InsideMountpoint {
                    kind: "lowerdir",
                    dir: l.clone(),
                    mnt,
                });
            }
            lowers.push(c);
        }
        opts.lowers = lowers;
        for (kind, d) in [("upperdir", &mut opts.upper), ("workdir", &mut opts.work)] {
            if let Some(p) = d {
                let c = canonical(kind, p)?;
                if c.starts_with(&mnt) {
                    return Err(MountError::InsideMountpoint {
                        kind,
                        dir: p.clone(),
                        mnt,
                    });
                }
                *p = c;
            }
        }
        // The server resolves names beneath its layers' fds: a mountpoint
        // inside a layer would lead it into its own mount.
        let layers = opts.lowers.iter().map(|l| ("lowerdir", l));
        let rw = [("upperdir", &opts.upper), ("workdir", &opts.work)];
        let rw = rw
            .into_iter()
            .filter_map(|(k, d)| d.as_ref().map(|d| (k, d)));
        if let Some((kind, dir)) = layers.chain(rw).find(|(_, d)| mnt.starts_with(d)) {
            return Err(MountError::MountpointInsideLayer {
                kind,
                dir: dir.clone(),
                mnt,
            });
        }
        let (upper, work) = (opts.upper.as_deref(), opts.work.as_deref());
        let roots = layers::Roots::open(&opts.lowers, upper, work)?;
        let locks = lock_layers(&roots, upper, work)?;
        sys::raise_nofile_limit();
        let stack = layers::Stack::from_roots(roots)?;
        let threads = opts.threads.unwrap_or_else(default_threads);
        let mut flags: u64 = if opts.nosuid { libc::MS_NOSUID } else { 0 };
        if opts.nodev {
            flags |= libc::MS_NODEV;
        }
        if opts.noexec {
            flags |= libc::MS_NOEXEC;
        }
        if opts.noatime {
            flags |= libc::MS_NOATIME;
        }
        let read_only = opts.upper.is_none() || opts.read_only;
        if read_only {
            flags |= libc::MS_RDONLY;
        }
        let forms = overlay::upper_forms(&stack, &opts)
            .map_err(|e| MountError::UpperUnusable(opts.work.clone().unwrap_or_default(), e))?;
        let overlay = Arc::new(Overlay::new(stack, opts, forms).map_err(MountError::Setup)?);
        // Privilege is what the kernel allows, not the uid: uid 0 in a user
        // namespace may be refused /dev/fuse too, and then fusermount3 is
        // the way, as for any other user.
        let privileged = sys::has_init_cap_sys_admin();
        // A setuid fusermount3 is no help in a user namespace: the host's
        // root is not mapped there, so it runs without its privilege.
        let fusermount_helps = !privileged && !sys::in_user_namespace();
        let opened = sys::open_fuse_device();
        if let Err(e @ (Errno::EACCES | Errno::EPERM | Errno::ENOENT | Errno::ENODEV)) = opened {
            if !fusermount_helps {
                return Err(MountError::Device(e));
            }
        }
        let direct = opened.and_then(|dev| {
            sys::mount_fuse(
                dev.as_fd(),
                &mnt,
                "strata",
                "strata",
                flags,
                "default_permissions,allow_other",
            )
            .map(|()| dev)
        });
        let (dev, fusermount) = match direct {
            Ok(dev) => (dev, None),
            // A user who may not open /dev/fuse or mount: the setuid
            // fusermount3 mounts, as libfuse does for fuse-overlayfs.
            Err(Errno::EACCES | Errno::EPERM) if fusermount_helps => {
                let (dev, sock) = sys::mount_fuse_fusermount(&mnt, &fusermount_options(flags))
                    .map_err(|e| MountError::Mount(mnt.clone(), e))?;
                (dev, Some(sock))
            }
            Err(e) => return Err(MountError::Mount(mnt.clone(), e)),
        };
        Ok(Prepared {
            dev,
            mountpoint: mnt,
            overlay,
            threads,
            fusermount,
            locks,
        })
    }

    /// The canonical mountpoint.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Answers the kernel's FUSE handshake; then the mount is ready to be
    /// served with [`Mounted::run`]. On error the mount is detached.
    pub fn handshake(self) -> Result<Mounted, MountError> {
        let Prepared {
            dev,
            mountpoint: mnt,
            overlay,
            threads,
            fusermount,
            locks,
        } = self;
        let mut config = Config::default();
        config.acl = SessionACL::All;
        config.n_threads = Some(threads);
        config.clone_fd = true;
        let fs = fuse::StrataFs::new(overlay.clone());
        let session = match Session::from_fd(fs, dev, SessionACL::All, config) {
            Ok(s) => {
                let _ = overlay.notifier.set(s.notifier());
                prune::start(&overlay);
                Ok(s)
            }
            Err(e) => Err(e),
        };
        let session = match session {
            Ok(s) => s,
            Err(e) => {
                let _ = sys::umount_detach(&mnt);
                return Err(MountError::Handshake(e));
            }
        };
        Ok(Mounted {
            transport: session.transport_stats(),
            session,
            mountpoint: mnt,
            overlay,
            threads,
            fusermount,
            _locks: locks,
        })
    }
}

impl Mounted {
    /// Opens the layers of `opts`, mounts them at `mountpoint` and answers
    /// the FUSE handshake ([`Prepared::mount`], then
    /// [`Prepared::handshake`]): requests wait until [`Mounted::run`]
    /// serves them. On error nothing is left mounted.
    pub fn mount(opts: MountOptions, mountpoint: &Path) -> Result<Mounted, MountError> {
        Prepared::mount(opts, mountpoint)?.handshake()
    }

    /// The canonical mountpoint.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The filesystem being served.
    pub fn overlay(&self) -> &Arc<Overlay> {
        &self.overlay
    }

    /// Whether fusermount3 made the mount (an unprivileged user): it
    /// unmounts when the server ends, and this process cannot unmount.
    pub fn via_fusermount(&self) -> bool {
        self.fusermount.is_some()
    }

    /// Number of worker threads that will serve requests.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Whether INIT accepted FUSE over io_uring: then [`Mounted::run`]
    /// serves through per-CPU io_uring queues (`uring=`).
    pub fn uring(&self) -> bool {
        self.session.uring_negotiated()
    }

    /// `f` is called once [`Mounted::run`] serves (with FUSE over io_uring,
    /// once every CPU's queue is registered) or with the one-line reason it
    /// cannot (the mount is then detached and `run` returns the error).
    pub fn on_ready(&mut self, f: impl FnOnce(Result<(), String>) + Send + 'static) {
        self.session.on_ready(Box::new(f));
    }

    /// The counts of what each transport served, live while the mount is
    /// served: [`fuser::TransportStats::transport`] says which one serves.
    pub fn transport(&self) -> Arc<fuser::TransportStats> {
        self.transport.clone()
    }

    /// Serves requests until the filesystem is unmounted (`fusermount3 -u`,
    /// `umount`, or [`unmount`]).
    ///
    /// With FUSE over io_uring accepted at INIT, the ring is registered
    /// first; if that fails the kernel would hold every request, so the
    /// mount is detached and the error returned.
    pub fn run(self) -> std::io::Result<()> {
        let uring = self.session.uring_negotiated();
        let res = self.session.run();
        // The last burst of marked copy-ups, made durable (see copyup.rs).
        if let Some(p) = &self.overlay.pending_sync {
            if let Err(e) = p.flush(true) {
                tracing::warn!(%e, "cannot sync the upper layer at unmount; unsynced copy-ups stay marked");
            }
        }
        if uring && self.transport.ring_queues() == 0 {
            let _ = sys::umount_detach(&self.mountpoint);
        }
        if let Some(file) = &self.overlay.opts.stats {
            let pruned = self
                .overlay
                .stats_pruned
                .load(std::sync::atomic::Ordering::Relaxed);
            let peak = self
                .overlay
                .stats_peak_nodes
                .load(std::sync::atomic::Ordering::Relaxed);
            let t = &self.transport;
            let extra = format!(
                "{:<16} {pruned:>10}\n{:<16} {peak:>10}\n{:<16} {:>10}\n{:<16} {:>10}\n{:<16} {:>10}\n{:<16} {}\n",
                "pruned",
                "peak nodes",
                "transport",
                t.transport().to_string(),
                "ring requests",
                t.ring_requests(),
                "dev requests",
                t.dev_requests(),
                "forms",
                self.overlay.forms
            );
            if let Err(e) = self.overlay.stats.append_to(file, &self.mountpoint, &extra) {
                tracing::warn!(file = %file.display(), %e, "cannot write the request counts");
            }
        }
        res
    }
}

/// Detaches the mount at `mountpoint`; its server then exits by itself.
pub fn unmount(mountpoint: &Path) -> Result<(), Errno> {
    sys::umount_detach(mountpoint)
}

#[cfg(test)]
mod unit_tests;
