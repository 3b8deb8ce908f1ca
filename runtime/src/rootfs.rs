//! A container's root filesystem: the init layer made beside the image's
//! layers at create time, and the mounts made inside the container's mount
//! namespace before `pivot_root` — all through the [`Syscall`] seam.
//!
//! The init layer (as docker's `-init` layer) holds the mountpoints the
//! runtime needs — `/proc`, `/sys`, `/dev`, `/etc/hostname`, `/etc/hosts`,
//! `/etc/resolv.conf`, volume targets — so that they exist in the merged
//! view without writing anything into the container's upper layer: `diff`
//! and `commit` see only what the container itself changed.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};

use crate::container::{ContainerConfig, Network, Paths, Volume};
use crate::sys::Syscall;

/// A mount step that failed, with what it was doing.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {errno}", path.display())]
pub struct SetupError {
    /// The step.
    pub what: &'static str,
    /// The path.
    pub path: PathBuf,
    /// The errno.
    pub errno: Errno,
}

fn err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> SetupError + 'a {
    move |errno| SetupError {
        what,
        path: path.to_path_buf(),
        errno,
    }
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> SetupError + 'a {
    move |e| SetupError {
        what,
        path: path.to_path_buf(),
        errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    }
}

/// `rel` joined onto `root`, with no `..` and no leading `/`.
pub fn in_root(root: &Path, rel: &str) -> PathBuf {
    let mut p = root.to_path_buf();
    for c in rel.split('/') {
        match c {
            "" | "." | ".." => {}
            c => p.push(c),
        }
    }
    p
}

/// The mode and owner of `rel` in the topmost of `lowers` that has it.
fn lower_meta(lowers: &[PathBuf], rel: &str) -> Option<fs::Metadata> {
    lowers
        .iter()
        .find_map(|l| fs::symlink_metadata(in_root(l, rel)).ok())
}

fn mkdir_like(init: &Path, lowers: &[PathBuf], rel: &str) -> std::io::Result<()> {
    let mut acc = String::new();
    for c in rel
        .split('/')
        .filter(|c| !c.is_empty() && *c != "." && *c != "..")
    {
        acc.push('/');
        acc.push_str(c);
        let p = in_root(init, &acc);
        if p.exists() {
            continue;
        }
        let meta = lower_meta(lowers, &acc).filter(|m| m.is_dir());
        let mode = meta.as_ref().map(|m| m.mode() & 0o7777).unwrap_or(0o755);
        fs::DirBuilder::new().mode(mode).create(&p)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
        if let Some(m) = meta {
            let _ = std::os::unix::fs::lchown(&p, Some(m.uid()), Some(m.gid()));
        }
    }
    Ok(())
}

fn touch(p: &Path) -> std::io::Result<()> {
    if !p.exists() {
        fs::File::create(p)?;
        fs::set_permissions(p, fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

/// The `/etc/hosts` a container sees.
pub fn hosts_file(hostname: &str) -> String {
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
    )
}

/// Fills the init layer and the files bind-mounted into `/etc`.
pub fn prepare_init_layer(
    paths: &Paths,
    config: &ContainerConfig,
    lowers: &[PathBuf],
) -> std::io::Result<()> {
    let init = paths.init();
    for d in ["/proc", "/sys", "/dev", "/etc"] {
        mkdir_like(&init, lowers, d)?;
    }
    for f in ["etc/hostname", "etc/hosts", "etc/resolv.conf"] {
        if lower_meta(lowers, f).is_none_or(|m| m.is_file()) {
            touch(&init.join(f))?;
        }
    }
    for v in &config.volumes {
        let parent = Path::new(&v.target)
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        mkdir_like(&init, lowers, &parent)?;
        if lower_meta(lowers, &v.target).is_none() {
            if v.host.is_dir() {
                mkdir_like(&init, lowers, &v.target)?;
            } else {
                touch(&in_root(&init, &v.target))?;
            }
        }
    }
    fs::write(paths.hostname(), format!("{}\n", config.hostname))?;
    fs::write(paths.hosts(), hosts_file(&config.hostname))?;
    let resolv = match config.network {
        Network::Host => fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        Network::None => String::new(),
    };
    fs::write(paths.resolv(), resolv)?;
    for f in [paths.hostname(), paths.hosts(), paths.resolv()] {
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

/// Everything the in-namespace setup needs to know.
#[derive(Debug, Clone)]
pub struct RootfsPlan {
    /// The merged view (the FUSE mountpoint), to become `/`.
    pub root: PathBuf,
    /// Files bind-mounted on `/etc/hostname`, `/etc/hosts`, `/etc/resolv.conf`.
    pub etc_files: Vec<(PathBuf, &'static str)>,
    /// Host paths bind-mounted in.
    pub volumes: Vec<Volume>,
    /// The terminal to show as `/dev/console`, if the process has one.
    pub console: Option<PathBuf>,
}

impl RootfsPlan {
    /// The plan for a container.
    pub fn for_container(paths: &Paths, config: &ContainerConfig) -> RootfsPlan {
        RootfsPlan {
            root: paths.merged(),
            etc_files: vec![
                (paths.hostname(), "etc/hostname"),
                (paths.hosts(), "etc/hosts"),
                (paths.resolv(), "etc/resolv.conf"),
            ],
            volumes: config.volumes.clone(),
            console: None,
        }
    }
}

const DEVICES: [(&str, u64, u64); 5] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
];

fn bind(sys: &dyn Syscall, src: &Path, dst: &Path, read_only: bool) -> Result<(), SetupError> {
    sys.mount(
        Some(src),
        dst,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )
    .map_err(err("bind-mount onto", dst))?;
    if read_only {
        sys.mount(
            None,
            dst,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
            None,
        )
        .map_err(err("remount read-only", dst))?;
    }
    Ok(())
}

/// Makes the container's mounts inside its (new) mount namespace: the
/// namespace made private, the union bind-mounted onto itself, `/proc`,
/// `/sys` (read-only), `/dev` (tmpfs with the standard devices, `pts`,
/// `shm` and the fd links), the `/etc` files and the volumes.
pub fn setup_mounts(sys: &dyn Syscall, plan: &RootfsPlan) -> Result<(), SetupError> {
    let root = &plan.root;
    sys.mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )
    .map_err(err("make private", Path::new("/")))?;
    sys.mount(
        Some(root),
        root,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )
    .map_err(err("bind-mount the root onto itself", root))?;
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    let proc_ = root.join("proc");
    sys.mount(Some(Path::new("proc")), &proc_, Some("proc"), nodev, None)
        .map_err(err("mount proc on", &proc_))?;
    let sys_ = root.join("sys");
    if sys
        .mount(
            Some(Path::new("sysfs")),
            &sys_,
            Some("sysfs"),
            nodev | MsFlags::MS_RDONLY,
            None,
        )
        .is_err()
    {
        bind(sys, Path::new("/sys"), &sys_, true)?;
    }
    let dev = root.join("dev");
    sys.mount(
        Some(Path::new("tmpfs")),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )
    .map_err(err("mount tmpfs on", &dev))?;
    for (name, major, minor) in DEVICES {
        let p = dev.join(name);
        sys.mknod(
            &p,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(major, minor),
        )
        .map_err(err("mknod", &p))?;
    }
    let tty = dev.join("tty");
    touch(&tty).map_err(io_err("create", &tty))?;
    if bind(sys, Path::new("/dev/tty"), &tty, false).is_err() {
        let _ = fs::remove_file(&tty);
        sys.mknod(
            &tty,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(5, 0),
        )
        .map_err(err("mknod", &tty))?;
    }
    let pts = dev.join("pts");
    fs::create_dir_all(&pts).map_err(io_err("mkdir", &pts))?;
    sys.mount(
        Some(Path::new("devpts")),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )
    .map_err(err("mount devpts on", &pts))?;
    let shm = dev.join("shm");
    fs::create_dir_all(&shm).map_err(io_err("mkdir", &shm))?;
    sys.mount(
        Some(Path::new("shm")),
        &shm,
        Some("tmpfs"),
        nodev,
        Some("mode=1777,size=65536k"),
    )
    .map_err(err("mount tmpfs on", &shm))?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let p = dev.join(link);
        std::os::unix::fs::symlink(target, &p).map_err(io_err("symlink", &p))?;
    }
    if let Some(console) = &plan.console {
        let p = dev.join("console");
        touch(&p).map_err(io_err("create", &p))?;
        bind(sys, console, &p, false)?;
    }
    for (src, rel) in &plan.etc_files {
        let dst = root.join(rel);
        if dst.is_file() {
            bind(sys, src, &dst, false)?;
        }
    }
    for v in &plan.volumes {
        bind(sys, &v.host, &in_root(root, &v.target), v.read_only)?;
    }
    Ok(())
}

/// Makes `root` the root directory with pivot_root, and detaches the old
/// root (the `pivot_root(".", ".")` idiom of runc).
pub fn pivot(sys: &dyn Syscall, root: &Path) -> Result<(), SetupError> {
    sys.chdir(root).map_err(err("chdir", root))?;
    sys.pivot_root(Path::new("."), Path::new("."))
        .map_err(err("pivot_root to", root))?;
    sys.mount(
        None,
        Path::new("."),
        None,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None,
    )
    .map_err(err("make the old root a slave", root))?;
    sys.umount2(Path::new("."), MntFlags::MNT_DETACH)
        .map_err(err("detach the old root", root))?;
    sys.chdir(Path::new("/"))
        .map_err(err("chdir", Path::new("/")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{Call, RecordingSyscall};

    #[test]
    fn mounts_proc_sys_dev_and_etc_files_without_mounting() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("merged");
        for d in ["proc", "sys", "dev", "etc", "data"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        for f in ["etc/hostname", "etc/hosts", "etc/resolv.conf"] {
            fs::write(root.join(f), "").unwrap();
        }
        let hn = t.path().join("hostname");
        fs::write(&hn, "box\n").unwrap();
        let plan = RootfsPlan {
            root: root.clone(),
            etc_files: vec![(hn.clone(), "etc/hostname")],
            volumes: vec![Volume {
                host: t.path().to_path_buf(),
                target: "/data".into(),
                read_only: true,
            }],
            console: None,
        };
        let sys = RecordingSyscall::default();
        setup_mounts(&sys, &plan).unwrap();
        let mounts = sys.mounts();
        let has = |rel: &str, kind: &str| {
            mounts
                .iter()
                .any(|(p, k, _)| *p == root.join(rel) && k == kind)
        };
        assert!(has("", "bind"), "{mounts:?}");
        assert!(has("proc", "proc"));
        assert!(has("sys", "sysfs"));
        assert!(has("dev", "tmpfs"));
        assert!(has("dev/pts", "devpts"));
        assert!(has("dev/shm", "tmpfs"));
        assert!(has("etc/hostname", "bind"));
        let sysfs = mounts.iter().find(|(_, k, _)| k == "sysfs").unwrap();
        assert!(sysfs.2.contains(MsFlags::MS_RDONLY));
        let ro = mounts
            .iter()
            .filter(|(p, _, f)| *p == root.join("data") && f.contains(MsFlags::MS_RDONLY))
            .count();
        assert_eq!(ro, 1, "volume remounted read-only: {mounts:?}");
        let nodes: Vec<_> = sys
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Mknod(p, ..) => Some(p.file_name().unwrap().to_string_lossy().into_owned()),
                _ => None,
            })
            .collect();
        for d in ["null", "zero", "full", "random", "urandom"] {
            assert!(nodes.contains(&d.to_string()), "{nodes:?}");
        }
        assert_eq!(
            fs::read_link(root.join("dev/fd")).unwrap(),
            Path::new("/proc/self/fd")
        );
        // The first call makes the namespace private: nothing propagates out.
        assert!(
            matches!(&sys.calls()[0], Call::Mount { flags, .. } if flags.contains(MsFlags::MS_PRIVATE))
        );
    }

    #[test]
    fn pivot_detaches_the_old_root() {
        let sys = RecordingSyscall::default();
        pivot(&sys, Path::new("/x/merged")).unwrap();
        let calls = sys.calls();
        assert_eq!(calls[0], Call::Chdir("/x/merged".into()));
        assert_eq!(calls[1], Call::PivotRoot(".".into(), ".".into()));
        assert_eq!(calls[3], Call::Umount2(".".into(), MntFlags::MNT_DETACH));
        assert_eq!(calls[4], Call::Chdir("/".into()));
    }

    #[test]
    fn init_layer_holds_mountpoints_with_lower_modes() {
        let t = tempfile::tempdir().unwrap();
        let lower = t.path().join("lower");
        fs::create_dir_all(lower.join("etc")).unwrap();
        fs::set_permissions(lower.join("etc"), fs::Permissions::from_mode(0o711)).unwrap();
        let paths = Paths {
            dir: t.path().join("c"),
        };
        fs::create_dir_all(paths.init()).unwrap();
        let cfg: ContainerConfig = serde_json::from_value(serde_json::json!({
            "id": "a".repeat(64), "name": "n", "image": "i",
            "image_id": format!("sha256:{}", "b".repeat(64)),
            "created": "1970-01-01T00:00:00Z", "args": ["sh"], "env": [],
            "workdir": "/", "user": "", "hostname": "h",
            "volumes": [{"host": "/tmp", "target": "/mnt/v", "read_only": false}]
        }))
        .unwrap();
        prepare_init_layer(&paths, &cfg, &[lower]).unwrap();
        let init = paths.init();
        assert_eq!(
            fs::metadata(init.join("etc")).unwrap().mode() & 0o777,
            0o711
        );
        assert!(init.join("etc/hosts").is_file());
        assert!(init.join("mnt/v").is_dir());
        assert_eq!(fs::read_to_string(paths.hostname()).unwrap(), "h\n");
    }

    /// Runs `f` in a forked child (namespace changes stay there) and
    /// returns its exit code.
    fn in_child(f: impl FnOnce() -> i32) -> i32 {
        match crate::sys::fork().unwrap() {
            crate::sys::Forked::Child => {
                let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(99);
                crate::sys::exit_child(code)
            }
            crate::sys::Forked::Parent(pid) => crate::attach::wait_exit(pid),
        }
    }

    #[test]
    fn real_mounts_and_pivot_in_a_forked_child() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        for d in ["proc", "sys", "dev", "etc", "bin"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(root.join("etc/hostname"), "").unwrap();
        let hn = t.path().join("hostname");
        fs::write(&hn, "box\n").unwrap();
        let plan = RootfsPlan {
            root: root.clone(),
            etc_files: vec![(hn, "etc/hostname")],
            volumes: vec![],
            console: None,
        };
        let code = in_child(|| {
            let sys = crate::sys::RealSyscall;
            if sys.unshare(nix::sched::CloneFlags::CLONE_NEWNS).is_err() {
                return 2;
            }
            if setup_mounts(&sys, &plan).is_err() {
                return 3;
            }
            if pivot(&sys, &plan.root).is_err() {
                return 4;
            }
            let null_ok = fs::metadata("/dev/null").is_ok_and(|m| {
                use std::os::unix::fs::FileTypeExt;
                m.file_type().is_char_device()
            });
            let checks = [
                Path::new("/proc/self/status").exists(),
                null_ok,
                fs::read_to_string("/etc/hostname").ok().as_deref() == Some("box\n"),
                Path::new("/bin").is_dir(),
                fs::write("/sys/x", "").is_err(),
            ];
            match checks.iter().position(|ok| !ok) {
                None => 0,
                Some(i) => 10 + i as i32,
            }
        });
        assert_eq!(code, 0, "check {} failed in the child", code - 10);
        // The parent's mount namespace is untouched.
        assert!(!crate::proc::is_mounted(&root.join("proc")));
    }
}
