//! `strata` for an ordinary user: every command runs in the user's
//! rootless namespace, as rootless podman's do.
//!
//! The namespace is a user namespace that maps root to the user and ids
//! 1..=N to the user's subordinate range from `/etc/subuid` and
//! `/etc/subgid` (written by the setuid `newuidmap`/`newgidmap` of Debian's
//! `uidmap`), with a mount namespace of its own. A pause process holds
//! both for as long as it lives (its pid and start time in
//! `RUN/pause.pid`, `RUN` = `$XDG_RUNTIME_DIR/strata`); each command joins
//! them (`setns`) before it does anything else, so containers, their
//! supervisors and `strata mount`s of one user share one namespace, and
//! the store's files carry the owners the images name, mapped to the
//! user's range on disk. In there `strata` is root, and what it may do is
//! what the kernel allows (probed by the store and the mount, never judged
//! by the uid): no device nodes, no `trusted.*` xattrs; libcontainer sees
//! it runs in a user namespace and works rootless.
//!
//! The store is `$XDG_DATA_HOME/strata` (`~/.local/share/strata`).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sched::CloneFlags;
use nix::unistd::{Gid, Uid};

use crate::proc::ProcId;
use crate::sys;

/// Why the rootless namespace cannot be made or joined; each names the fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The user has no name in `/etc/passwd`.
    #[error("uid {0} has no entry in /etc/passwd: rootless strata needs a named user")]
    NoUser(u32),
    /// No subordinate ids.
    #[error(
        "no subordinate {kind} range for {user} in /etc/sub{kind}: add one, e.g. `usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user}`"
    )]
    NoRange {
        /// `uid` or `gid`.
        kind: &'static str,
        /// The user's name.
        user: String,
    },
    /// `newuidmap` or `newgidmap` is missing.
    #[error("{0} not found: install the uidmap package (apt-get install uidmap)")]
    NoHelper(&'static str),
    /// The mapping helper failed.
    #[error("{helper} failed: {why}")]
    Helper {
        /// `newuidmap` or `newgidmap`.
        helper: &'static str,
        /// Its last line of error, or its exit status.
        why: String,
    },
    /// The kernel refuses user namespaces to this user.
    #[error(
        "cannot create a user namespace: {0}; unprivileged user namespaces must be enabled (sysctl user.max_user_namespaces > 0, kernel.unprivileged_userns_clone=1)"
    )]
    NoUserns(Errno),
    /// A step of making or joining the namespace.
    #[error("rootless namespace: {what}: {errno}")]
    Sys {
        /// The step.
        what: String,
        /// The error.
        errno: Errno,
    },
    /// A file of the run directory.
    #[error("rootless namespace: {what} {path}: {source}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, Error>;

fn sys_err(what: impl Into<String>) -> impl FnOnce(Errno) -> Error {
    let what = what.into();
    move |errno| Error::Sys { what, errno }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Where an ordinary user's things live.
#[derive(Debug, Clone)]
pub struct Dirs {
    /// The store: `$XDG_DATA_HOME/strata`, else `~/.local/share/strata`.
    pub store: PathBuf,
    /// Run state: `$XDG_RUNTIME_DIR/strata`, else `/tmp/strata-run-UID`.
    pub run: PathBuf,
}

impl Dirs {
    /// The directories of the calling user (from the environment, else the
    /// home directory in `/etc/passwd`).
    pub fn of_user(home: &Path, uid: u32) -> Dirs {
        let env = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let store = env("XDG_DATA_HOME")
            .unwrap_or_else(|| home.join(".local/share"))
            .join("strata");
        let run = env("XDG_RUNTIME_DIR")
            .map(|d| d.join("strata"))
            .unwrap_or_else(|| PathBuf::from(format!("/tmp/strata-run-{uid}")));
        Dirs { store, run }
    }
}

/// One subordinate id range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// The first id.
    pub start: u32,
    /// How many.
    pub count: u32,
}

/// The first range of `user` (by name or uid) in `/etc/subuid`-style text.
pub fn parse_range(text: &str, name: &str, id: u32) -> Option<Range> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let mut f = l.trim().split(':');
            let (who, start, count) = (f.next()?, f.next()?, f.next()?);
            (who == name || who.parse::<u32>() == Ok(id)).then_some(())?;
            Some(Range {
                start: start.parse().ok()?,
                count: count.parse().ok()?,
            })
        })
        .find(|r| r.count > 0)
}

fn range(kind: &'static str, name: &str, id: u32) -> Result<Range> {
    let text = std::fs::read_to_string(format!("/etc/sub{kind}")).unwrap_or_default();
    parse_range(&text, name, id).ok_or_else(|| Error::NoRange {
        kind,
        user: name.to_string(),
    })
}

fn find_helper(name: &'static str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(Error::NoHelper(name))
}

/// Enters the calling user's rootless namespace, making it if no pause
/// process holds one. Must run before the process starts a thread
/// (`setns` of a user namespace requires a single-threaded caller).
pub fn enter() -> Result<Dirs> {
    let uid = nix::unistd::getuid();
    let user = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .ok_or(Error::NoUser(uid.as_raw()))?;
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map_or_else(|| user.dir.clone(), PathBuf::from);
    let dirs = Dirs::of_user(&home, uid.as_raw());
    make_private_dir(&dirs.run, uid)?;
    let pidfile = dirs.run.join("pause.pid");
    if let Some(pause) = live_pause(&pidfile) {
        if join(pause).is_ok() {
            return Ok(dirs);
        }
    }
    // One maker at a time; the others join what it made.
    let lock_path = dirs.run.join("pause.lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err("open", &lock_path))?;
    let _lock = Flock::lock(lock, FlockArg::LockExclusive)
        .map_err(|(_, e)| sys_err("lock pause.lock")(e))?;
    if let Some(pause) = live_pause(&pidfile) {
        join(pause)?;
        return Ok(dirs);
    }
    // The pause process is gone but containers still run (it was killed
    // alone): their supervisors hold the namespace, so join it there and
    // give it a new pause process, rather than make a second namespace
    // from which they could not be reached.
    if let Some(sup) = live_supervisor(&dirs.store) {
        if join(sup).is_ok() {
            let pause = spawn_pause_here()?;
            record_pause(&pidfile, pause)?;
            return Ok(dirs);
        }
    }
    let uids = range("uid", &user.name, uid.as_raw())?;
    let gids = range("gid", &user.name, uid.as_raw())?;
    let newuidmap = find_helper("newuidmap")?;
    let newgidmap = find_helper("newgidmap")?;
    let pause = spawn_pause(|pid| {
        map_ids(&newuidmap, "newuidmap", pid, uid.as_raw(), uids)?;
        map_ids(&newgidmap, "newgidmap", pid, user.gid.as_raw(), gids)
    })?;
    record_pause(&pidfile, pause)?;
    join(pause)?;
    Ok(dirs)
}

/// Writes the pause process's identity (temp file + rename).
fn record_pause(pidfile: &Path, pause: ProcId) -> Result<()> {
    let tmp = pidfile.with_extension("pid.tmp");
    std::fs::write(&tmp, format!("{} {}\n", pause.pid, pause.start_time))
        .map_err(io_err("write", &tmp))?;
    std::fs::rename(&tmp, pidfile).map_err(io_err("rename", pidfile))
}

/// A live supervisor of one of the store's containers.
fn live_supervisor(store: &Path) -> Option<ProcId> {
    std::fs::read_dir(store.join("containers"))
        .ok()?
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("state.json")).ok())
        .filter_map(|b| serde_json::from_slice::<crate::container::State>(&b).ok())
        .find_map(|st| st.supervisor.filter(ProcId::is_alive))
}

/// Forks a pause process in the namespaces this process is in.
fn spawn_pause_here() -> Result<ProcId> {
    match sys::fork().map_err(sys_err("fork"))? {
        sys::Forked::Child => {
            let _ = nix::unistd::setsid();
            let _ = nix::unistd::chdir("/");
            pause_forever()
        }
        sys::Forked::Parent(child) => ProcId::of(child.as_raw())
            .ok_or_else(|| sys_err("start the pause process")(Errno::ESRCH)),
    }
}

/// The pause process's life: no descriptors of its caller, a name `ps`
/// shows, asleep until killed.
fn pause_forever() -> ! {
    sys::detach_stdio_and_close_all();
    let _ = nix::sys::prctl::set_name(c"strata-pause");
    loop {
        nix::unistd::pause();
    }
}

/// Creates the run directory, private to the user; refuses one that is
/// not the user's.
fn make_private_dir(dir: &Path, uid: Uid) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) => return Err(io_err("mkdir", dir)(e)),
    }
    let m = std::fs::symlink_metadata(dir).map_err(io_err("stat", dir))?;
    if m.uid() != uid.as_raw() || !m.is_dir() {
        return Err(io_err("use", dir)(std::io::Error::other(
            "not a directory owned by the user",
        )));
    }
    Ok(())
}

/// The pause process recorded in `pidfile`, if it still runs.
fn live_pause(pidfile: &Path) -> Option<ProcId> {
    let text = std::fs::read_to_string(pidfile).ok()?;
    let mut f = text.split_whitespace();
    let p = ProcId {
        pid: f.next()?.parse().ok()?,
        start_time: f.next()?.parse().ok()?,
    };
    p.is_alive().then_some(p)
}

/// Joins the user and mount namespaces of `pause`.
fn join(pause: ProcId) -> Result<()> {
    let open = |ns: &str| {
        File::open(format!("/proc/{}/ns/{ns}", pause.pid)).map_err(|e| Error::Sys {
            what: format!("open the pause process's {ns} namespace"),
            errno: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
        })
    };
    let (user, mnt) = (open("user")?, open("mnt")?);
    // The process may have gone (and its pid been reused) after the check.
    if !pause.is_alive() {
        return Err(sys_err("join the pause process")(Errno::ESRCH));
    }
    // Joining a mount namespace moves the caller to its root: relative
    // paths on the command line must keep meaning the caller's directory.
    let cwd = nix::fcntl::open(
        ".",
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(sys_err("open the working directory"))?;
    nix::sched::setns(user.as_fd(), CloneFlags::CLONE_NEWUSER)
        .map_err(sys_err("join the user namespace"))?;
    nix::sched::setns(mnt.as_fd(), CloneFlags::CLONE_NEWNS)
        .map_err(sys_err("join the mount namespace"))?;
    nix::unistd::fchdir(cwd).map_err(sys_err("return to the working directory"))?;
    // Root in there, with its capabilities.
    nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
        .map_err(sys_err("setresgid"))?;
    nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
        .map_err(sys_err("setresuid"))?;
    // The user's supplementary groups are not mapped in there.
    let _ = nix::unistd::setgroups(&[]);
    Ok(())
}

/// Runs `helper PID 0 ID 1 START COUNT`: root to the user, 1.. to the
/// subordinate range.
fn map_ids(helper: &Path, name: &'static str, pid: i32, id: u32, r: Range) -> Result<()> {
    let out = Command::new(helper)
        .args([pid.to_string(), "0".into(), id.to_string(), "1".into()])
        .args(["1".to_string(), r.start.to_string(), r.count.to_string()])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| Error::Helper {
            helper: name,
            why: e.to_string(),
        })?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    Err(Error::Helper {
        helper: name,
        why: err
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .map_or_else(|| out.status.to_string(), |l| l.trim().to_string()),
    })
}

/// Forks the pause process: it makes a user namespace, waits for `map` to
/// give it ids, makes a mount namespace (mounts from the host arrive,
/// none leave), leaves the caller's session and descriptors, and sleeps
/// until killed.
fn spawn_pause(map: impl FnOnce(i32) -> Result<()>) -> Result<ProcId> {
    let (to_parent_r, to_parent_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys_err("pipe"))?;
    let (to_child_r, to_child_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys_err("pipe"))?;
    match sys::fork().map_err(sys_err("fork"))? {
        sys::Forked::Child => {
            drop(to_parent_r);
            drop(to_child_w);
            pause_main(to_parent_w, to_child_r)
        }
        sys::Forked::Parent(child) => {
            drop(to_parent_w);
            drop(to_child_r);
            let mut from = File::from(to_parent_r);
            let mut to = File::from(to_child_w);
            let fail = |e: Error| {
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(child, None);
                e
            };
            match read_status(&mut from) {
                Ok(()) => {}
                Err(Errno::EPIPE) => {
                    return Err(fail(sys_err("start the pause process")(Errno::EPIPE)))
                }
                Err(e) => return Err(fail(Error::NoUserns(e))),
            }
            map(child.as_raw()).map_err(fail)?;
            to.write_all(&[0]).map_err(|e| {
                fail(sys_err("start the pause process")(Errno::from_raw(
                    e.raw_os_error().unwrap_or(0),
                )))
            })?;
            read_status(&mut from).map_err(|e| fail(sys_err("make the mount namespace")(e)))?;
            ProcId::of(child.as_raw())
                .ok_or_else(|| sys_err("start the pause process")(Errno::ESRCH))
        }
    }
}

/// Mounts the cgroup2 hierarchy at `/sys/fs/cgroup` in the namespace
/// where the host has cgroup v1 there (legacy or hybrid): libcontainer
/// then manages cgroups as it does rootless on cgroup v2, best effort (a
/// user may not make cgroups without delegation), instead of failing on
/// v1 hierarchies only root may write. Nothing changes where it fails.
fn own_cgroup2() {
    let is_cgroup2 = nix::sys::statfs::statfs("/sys/fs/cgroup")
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC);
    if !is_cgroup2 {
        let _ = nix::mount::mount(
            Some("cgroup2"),
            "/sys/fs/cgroup",
            Some("cgroup2"),
            nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NODEV
                | nix::mount::MsFlags::MS_NOEXEC,
            None::<&str>,
        );
    }
}

/// Reads one status byte: 0 is success, else an errno; EOF is EPIPE.
fn read_status(from: &mut File) -> std::result::Result<(), Errno> {
    let mut b = [0u8; 1];
    match from.read(&mut b) {
        Ok(1) if b[0] == 0 => Ok(()),
        Ok(1) => Err(Errno::from_raw(i32::from(b[0]))),
        _ => Err(Errno::EPIPE),
    }
}

/// The pause process, after the fork (single-threaded): reports each step
/// as one status byte and never returns.
fn pause_main(to_parent: OwnedFd, from_parent: OwnedFd) -> ! {
    let mut to = File::from(to_parent);
    let mut from = File::from(from_parent);
    let report = |to: &mut File, r: std::result::Result<(), Errno>| {
        let b = match r {
            Ok(()) => 0u8,
            Err(e) => u8::try_from(e as i32).unwrap_or(u8::MAX),
        };
        let _ = to.write_all(&[b]);
        if r.is_err() {
            sys::exit_child(1);
        }
    };
    report(&mut to, nix::sched::unshare(CloneFlags::CLONE_NEWUSER));
    let mut go = [0u8; 1];
    if !matches!(from.read(&mut go), Ok(1)) {
        sys::exit_child(1);
    }
    let setup = (|| {
        nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))?;
        nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))?;
        nix::sched::unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWCGROUP)?;
        nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_SLAVE,
            None::<&str>,
        )?;
        own_cgroup2();
        nix::unistd::setsid()?;
        nix::unistd::chdir("/")?;
        Ok(())
    })();
    report(&mut to, setup);
    drop(to);
    drop(from);
    pause_forever()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_nonempty_range_of_the_user_by_name_or_uid() {
        let text =
            "# comment\nbob:200000:65536\nalice:100000:0\n1000:300000:65536\nalice:400000:65536\n";
        assert_eq!(
            parse_range(text, "alice", 1000),
            Some(Range {
                start: 300_000,
                count: 65_536
            })
        );
        assert_eq!(
            parse_range(text, "bob", 7),
            Some(Range {
                start: 200_000,
                count: 65_536
            })
        );
        assert_eq!(parse_range(text, "carol", 7), None);
        assert_eq!(parse_range("carol:x:1\ncarol:5\n", "carol", 7), None);
    }

    #[test]
    fn dirs_follow_xdg_and_fall_back_to_home_and_tmp() {
        let d = Dirs::of_user(Path::new("/home/alice"), 1000);
        // The test environment may set XDG variables: check the rule.
        match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            Some(x) => assert_eq!(d.store, PathBuf::from(x).join("strata")),
            None => assert_eq!(d.store, PathBuf::from("/home/alice/.local/share/strata")),
        }
        match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
            Some(x) => assert_eq!(d.run, PathBuf::from(x).join("strata")),
            None => assert_eq!(d.run, PathBuf::from("/tmp/strata-run-1000")),
        }
    }
}
