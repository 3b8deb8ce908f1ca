//! A small language of filesystem operations, run against a mounted tree,
//! and the differential driver that runs one script on the kernel's
//! overlayfs and on the program under test and compares everything.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, RenameFlags, AT_FDCWD};
use nix::sys::stat::{Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

use crate::fixture::Layers;
use crate::mount::Backend;
use crate::sys;
use crate::tree::{diff, is_private_xattr, normalize_upper, snapshot, SnapOpts, Snapshot};

/// Turns a generated name into the `&'static str` that [`Op`] holds (the
/// string is leaked; a test process is short-lived).
pub fn s(name: String) -> &'static str {
    Box::leak(name.into_boxed_str())
}

/// One operation; paths are relative to the mount root.
#[derive(Debug, Clone)]
pub enum Op {
    /// `open(O_CREAT|O_EXCL|O_WRONLY, mode)`, then write `data`.
    Create(&'static str, u32, &'static [u8]),
    /// `open(O_WRONLY)` and `pwrite(data, offset)`.
    Write(&'static str, u64, &'static [u8]),
    /// `open(O_WRONLY|O_APPEND)` and write.
    Append(&'static str, &'static [u8]),
    /// `truncate(2)`.
    Truncate(&'static str, u64),
    /// `open(O_WRONLY|O_TRUNC)` and write: a rewrite with a new length.
    Rewrite(&'static str, &'static [u8]),
    /// Read a whole file.
    Read(&'static str),
    /// List a directory (sorted names).
    List(&'static str),
    /// `lstat`: type, mode, owner, size of files, nlink of non-directories.
    Stat(&'static str),
    /// `mkdir(mode)`.
    Mkdir(&'static str, u32),
    /// `rmdir`.
    Rmdir(&'static str),
    /// `unlink`.
    Unlink(&'static str),
    /// `renameat2(from, to, flags)`.
    Rename(&'static str, &'static str, RenameFlags),
    /// `link(existing, new)`.
    Link(&'static str, &'static str),
    /// `symlink(target, path)`.
    Symlink(&'static str, &'static str),
    /// `mkfifo(path, mode)`.
    Mkfifo(&'static str, u32),
    /// `mknod(path, S_IFCHR|mode, makedev(major, minor))`.
    Mknod(&'static str, u32, u32, u32),
    /// `chmod`.
    Chmod(&'static str, u32),
    /// `lchown`.
    Chown(&'static str, u32, u32),
    /// `utimensat(AT_SYMLINK_NOFOLLOW)` with atime and mtime in seconds.
    Utimes(&'static str, i64, i64),
    /// `lsetxattr`.
    SetXattr(&'static str, &'static str, &'static [u8]),
    /// `lremovexattr`.
    RemoveXattr(&'static str, &'static str),
    /// `lgetxattr`.
    GetXattr(&'static str, &'static str),
    /// `llistxattr` (sorted, overlay-private names left out).
    ListXattr(&'static str),
    /// `rm -rf`: remove a tree depth first, continuing past errors; the
    /// first error is the result.
    RmRf(&'static str),
    /// Any other operation: a name and a function of the mount root.
    Custom(&'static str, fn(&Path) -> OpResult),
}

/// What an operation returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    /// Nothing but success.
    Unit,
    /// Bytes (file contents, an xattr value).
    Data(Vec<u8>),
    /// Names (a listing).
    Names(Vec<String>),
    /// A description (a stat).
    Meta(String),
}

/// An operation's result: its output or the errno.
pub type OpResult = Result<Out, Errno>;

fn errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Opens with O_NONBLOCK, so that a script opening a fifo gets ENXIO or
/// EOF instead of blocking forever (regular files ignore the flag).
fn open(
    path: &Path,
    f: impl FnOnce(&mut OpenOptions) -> &mut OpenOptions,
) -> Result<fs::File, Errno> {
    let mut o = OpenOptions::new();
    o.custom_flags(libc::O_NONBLOCK);
    f(&mut o).open(path).map_err(errno)
}

/// Whether `path` (following symlinks) is a fifo. A fifo is opened by the
/// kernel alone (no FUSE request) and opening one races with the other
/// test threads: a child they spawn holds copies of this process's fds
/// until it execs, so a reader closed a moment ago can still count, and a
/// non-blocking open for writing then succeeds instead of failing with
/// ENXIO. Scripts get what a fifo with no peer gives instead: ENXIO for
/// writers, end of file for readers.
fn is_fifo(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo())
}

/// Opens an existing path for writing, as [`open`]; a fifo gives ENXIO
/// (see [`is_fifo`]).
fn open_writer(
    path: &Path,
    f: impl FnOnce(&mut OpenOptions) -> &mut OpenOptions,
) -> Result<fs::File, Errno> {
    if is_fifo(path) {
        return Err(Errno::ENXIO);
    }
    open(path, f)
}

/// `lstat` described as the Stat operation reports it.
pub fn describe(path: &Path) -> Result<String, Errno> {
    let md = fs::symlink_metadata(path).map_err(errno)?;
    let kind = match md.mode() & libc::S_IFMT {
        libc::S_IFREG => format!("file {}B nlink {}", md.len(), md.nlink()),
        libc::S_IFDIR => "dir".to_string(),
        libc::S_IFLNK => format!("symlink nlink {}", md.nlink()),
        libc::S_IFIFO => format!("fifo nlink {}", md.nlink()),
        libc::S_IFCHR => format!(
            "chardev {}:{}",
            libc::major(md.rdev()),
            libc::minor(md.rdev())
        ),
        _ => "other".to_string(),
    };
    Ok(format!(
        "{kind} mode {:04o} owner {}:{}",
        md.mode() & 0o7777,
        md.uid(),
        md.gid()
    ))
}

fn rm_rf(path: &Path) -> Result<(), Errno> {
    let md = fs::symlink_metadata(path).map_err(errno)?;
    let mut first: Result<(), Errno> = Ok(());
    if md.is_dir() {
        match fs::read_dir(path) {
            Ok(rd) => {
                for e in rd {
                    match e {
                        Ok(e) => {
                            if let Err(err) = rm_rf(&e.path()) {
                                first = first.and(Err(err));
                            }
                        }
                        Err(err) => first = first.and(Err(errno(err))),
                    }
                }
            }
            Err(err) => first = first.and(Err(errno(err))),
        }
        first = first.and(fs::remove_dir(path).map_err(errno));
    } else {
        first = fs::remove_file(path).map_err(errno);
    }
    first
}

/// Runs one operation under `root`.
pub fn apply(root: &Path, op: &Op) -> OpResult {
    let j = |p: &str| -> PathBuf { root.join(p) };
    let unit = |r: Result<(), Errno>| r.map(|()| Out::Unit);
    match op {
        Op::Create(p, mode, data) => {
            let mut f = open(&j(p), |o| o.write(true).create_new(true).mode(*mode))?;
            f.write_all(data).map_err(errno)?;
            Ok(Out::Unit)
        }
        Op::Write(p, off, data) => {
            let f = open_writer(&j(p), |o| o.write(true))?;
            f.write_all_at(data, *off).map_err(errno)?;
            Ok(Out::Unit)
        }
        Op::Append(p, data) => {
            let mut f = open_writer(&j(p), |o| o.append(true))?;
            f.write_all(data).map_err(errno)?;
            Ok(Out::Unit)
        }
        Op::Truncate(p, len) => unit(nix::unistd::truncate(&j(p), *len as i64)),
        Op::Rewrite(p, data) => {
            let mut f = open_writer(&j(p), |o| o.write(true).truncate(true))?;
            f.write_all(data).map_err(errno)?;
            Ok(Out::Unit)
        }
        Op::Read(p) => {
            if is_fifo(&j(p)) {
                return Ok(Out::Data(Vec::new()));
            }
            let mut f = open(&j(p), |o| o.read(true))?;
            let mut v = Vec::new();
            f.read_to_end(&mut v).map_err(errno)?;
            Ok(Out::Data(v))
        }
        Op::List(p) => {
            let mut names = Vec::new();
            for e in fs::read_dir(j(p)).map_err(errno)? {
                names.push(e.map_err(errno)?.file_name().to_string_lossy().into_owned());
            }
            names.sort();
            Ok(Out::Names(names))
        }
        Op::Stat(p) => describe(&j(p)).map(Out::Meta),
        Op::Mkdir(p, mode) => unit(nix::unistd::mkdir(&j(p), Mode::from_bits_truncate(*mode))),
        Op::Rmdir(p) => unit(fs::remove_dir(j(p)).map_err(errno)),
        Op::Unlink(p) => unit(fs::remove_file(j(p)).map_err(errno)),
        Op::Rename(a, b, flags) => unit(nix::fcntl::renameat2(
            AT_FDCWD,
            &j(a),
            AT_FDCWD,
            &j(b),
            *flags,
        )),
        Op::Link(a, b) => unit(nix::unistd::linkat(
            AT_FDCWD,
            &j(a),
            AT_FDCWD,
            &j(b),
            AtFlags::empty(),
        )),
        Op::Symlink(target, p) => unit(std::os::unix::fs::symlink(target, j(p)).map_err(errno)),
        Op::Mkfifo(p, mode) => unit(nix::unistd::mkfifo(&j(p), Mode::from_bits_truncate(*mode))),
        Op::Mknod(p, mode, major, minor) => unit(nix::sys::stat::mknod(
            &j(p),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(*mode),
            libc::makedev(*major, *minor),
        )),
        Op::Chmod(p, mode) => unit(nix::sys::stat::fchmodat(
            AT_FDCWD,
            &j(p),
            Mode::from_bits_truncate(*mode),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )),
        Op::Chown(p, uid, gid) => unit(nix::unistd::fchownat(
            AT_FDCWD,
            &j(p),
            Some(Uid::from_raw(*uid)),
            Some(Gid::from_raw(*gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )),
        Op::Utimes(p, atime, mtime) => unit(nix::sys::stat::utimensat(
            AT_FDCWD,
            &j(p),
            &TimeSpec::new(*atime, 0),
            &TimeSpec::new(*mtime, 0),
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )),
        Op::SetXattr(p, name, value) => unit(sys::lsetxattr(&j(p), name, value)),
        Op::RemoveXattr(p, name) => unit(sys::lremovexattr(&j(p), name)),
        Op::GetXattr(p, name) => sys::lgetxattr(&j(p), name).map(Out::Data),
        Op::ListXattr(p) => {
            let mut names: Vec<String> = sys::llistxattr(&j(p))?
                .into_iter()
                .filter(|n| !is_private_xattr(n))
                .collect();
            names.sort();
            Ok(Out::Names(names))
        }
        Op::RmRf(p) => unit(rm_rf(&j(p))),
        Op::Custom(_, f) => f(root),
    }
}

/// Runs a script, recording every result.
pub fn run_script(root: &Path, ops: &[Op]) -> Vec<OpResult> {
    ops.iter().map(|op| apply(root, op)).collect()
}

/// A readable op (Custom shows its name).
pub struct ShowOp<'a>(pub &'a Op);

impl fmt::Display for ShowOp<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Op::Custom(name, _) => write!(f, "Custom({name})"),
            Op::Create(p, m, d) => {
                write!(f, "Create({p:?}, {m:o}, {:?})", String::from_utf8_lossy(d))
            }
            Op::Write(p, o, d) => write!(f, "Write({p:?}, {o}, {:?})", String::from_utf8_lossy(d)),
            Op::Append(p, d) => write!(f, "Append({p:?}, {:?})", String::from_utf8_lossy(d)),
            Op::Rewrite(p, d) => write!(f, "Rewrite({p:?}, {:?})", String::from_utf8_lossy(d)),
            other => write!(f, "{other:?}"),
        }
    }
}

fn show_result(r: &OpResult) -> String {
    match r {
        Ok(Out::Unit) => "ok".into(),
        Ok(Out::Data(d)) => {
            let s = String::from_utf8_lossy(&d[..d.len().min(80)]).into_owned();
            format!("ok {} bytes {s:?}", d.len())
        }
        Ok(Out::Names(n)) => format!("ok {n:?}"),
        Ok(Out::Meta(m)) => format!("ok {m}"),
        Err(e) => format!("{e}"),
    }
}

/// Everything recorded from one side of a differential run.
pub struct Record {
    /// Which backend.
    pub name: String,
    /// The merged tree before the script.
    pub before: Snapshot,
    /// The op results.
    pub results: Vec<OpResult>,
    /// The merged tree after the script.
    pub after: Snapshot,
    /// The upper directory after unmounting, normalized.
    pub upper: Option<Snapshot>,
}

/// Mounts `layers` with `backend`, runs `ops`, records what users see, then
/// unmounts and snapshots the upper directory.
pub fn record(layers: &Layers, backend: &Backend, ops: &[Op]) -> Record {
    let mut m = layers.mount(backend);
    let before = snapshot(m.path(), SnapOpts::MERGED);
    let results = run_script(m.path(), ops);
    let after = snapshot(m.path(), SnapOpts::MERGED);
    m.unmount();
    let upper = m.has_upper().then(|| {
        let lowers: Vec<Snapshot> = m
            .lowers()
            .iter()
            .map(|l| snapshot(l, SnapOpts::LAYER))
            .collect();
        let mut u = snapshot(m.upper(), SnapOpts::LAYER);
        normalize_upper(&mut u, &lowers);
        u
    });
    Record {
        name: backend.name(),
        before,
        results,
        after,
        upper,
    }
}

/// Compares two records; returns a readable report of every difference.
pub fn compare(ops: &[Op], a: &Record, b: &Record) -> Option<String> {
    let mut report = Vec::new();
    if let Some(d) = diff(&a.name, &a.before, &b.name, &b.before) {
        report.push(format!("merged tree before the script differs:\n{d}"));
    }
    let mut op_lines = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let (x, y) = (&a.results[i], &b.results[i]);
        if x != y {
            op_lines.push(format!(
                "  #{i} {}\n    {:>8}: {}\n    {:>8}: {}",
                ShowOp(op),
                a.name,
                show_result(x),
                b.name,
                show_result(y)
            ));
        }
    }
    if !op_lines.is_empty() {
        report.push(format!(
            "operation results differ:\n{}",
            op_lines.join("\n")
        ));
    }
    if let Some(d) = diff(&a.name, &a.after, &b.name, &b.after) {
        report.push(format!("merged tree after the script differs:\n{d}"));
    }
    if let (Some(ua), Some(ub)) = (&a.upper, &b.upper) {
        if let Some(d) = diff(&a.name, ua, &b.name, ub) {
            report.push(format!(
                "upper directory differs (whiteout and opaque forms normalized):\n{d}"
            ));
        }
    }
    if report.is_empty() {
        None
    } else {
        let script: Vec<String> = ops
            .iter()
            .zip(&a.results)
            .enumerate()
            .map(|(i, (op, r))| format!("  #{i} {} -> {}", ShowOp(op), show_result(r)))
            .collect();
        Some(format!(
            "{}\nscript (with {}'s results):\n{}",
            report.join("\n"),
            a.name,
            script.join("\n")
        ))
    }
}

/// The differential test: the same layers and script on the kernel's
/// overlayfs and on the program under test must give the same results,
/// merged trees and upper directories. Panics with both sides on a
/// difference. With `STRATA_TESTS_SHOW` set, prints every op's results.
pub fn differential(layers: &Layers, ops: &[Op]) {
    if let Some(why) = crate::upperfs::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let stripped;
    let layers = match crate::upperfs::adapt(layers) {
        Some(l) => {
            stripped = l;
            &stripped
        }
        None => layers,
    };
    let kernel = record(layers, &Backend::Kernel, ops);
    if let Some(why) = crate::upperfs::cannot_hold(kernel.upper.as_ref()) {
        let name = std::thread::current().name().unwrap_or("?").to_string();
        eprintln!("skipped: {name}{}: {why}", crate::upperfs::describe());
        crate::upperfs::run_in_userns();
        return;
    }
    let program = record(layers, &Backend::strata(), ops);
    if std::env::var_os("STRATA_TESTS_SHOW").is_some() {
        for (i, op) in ops.iter().enumerate() {
            eprintln!(
                "#{i} {} -> kernel {} / {} {}",
                ShowOp(op),
                show_result(&kernel.results[i]),
                program.name,
                show_result(&program.results[i])
            );
        }
    }
    if let Some(report) = compare(ops, &kernel, &program) {
        let name = std::thread::current().name().unwrap_or("?").to_string();
        if let Some(i) = crate::upperfs::first_refused_whiteout(&kernel.results, &program.results) {
            eprintln!(
                "skipped: {name}{}: #{i} {} needs a whiteout in the upper, which a FUSE overlay upper cannot hold (EINVAL: .wh. names refused, no 0/0 devices)",
                crate::upperfs::describe(),
                ShowOp(&ops[i])
            );
            crate::upperfs::run_in_userns();
            return;
        }
        panic!(
            "{} differs from the kernel's overlayfs{}:\n{report}",
            program.name,
            crate::upperfs::describe()
        );
    }
    // In an `upper_KIND` binary: the same case again in a user namespace.
    crate::upperfs::run_in_userns();
}

/// The differential test run in lockstep, for generated scripts: each op
/// runs on the kernel's overlayfs, then on the program under test, and the
/// results must agree. An op the kernel refuses with EXDEV (a rename of a
/// lower directory, which strata deliberately allows) is skipped on both
/// sides. The merged trees are compared every `check_every` ops and at the
/// end, the upper directories at the end. Every `remount_every` ops both
/// sides are unmounted and mounted again (same upper and work), which
/// checks that what the program wrote to its upper reads back the same.
/// Panics at the first difference with the script up to it.
pub fn differential_lockstep(
    layers: &Layers,
    ops: &[Op],
    check_every: usize,
    remount_every: Option<usize>,
) {
    let mut k = layers.mount(&Backend::Kernel);
    let strata = Backend::strata();
    let mut p = layers.mount(&strata);
    let name = strata.name();
    let mut done: Vec<String> = Vec::new();
    let fail = |done: &[String], what: String| -> ! {
        panic!("{name} differs from the kernel's overlayfs {what}\nscript so far (with the kernel's results):\n{}", done.join("\n"))
    };
    for (i, op) in ops.iter().enumerate() {
        let kr = apply(k.path(), op);
        if kr == Err(Errno::EXDEV) {
            done.push(format!(
                "  #{i} {} -> EXDEV on the kernel, skipped",
                ShowOp(op)
            ));
            continue;
        }
        let pr = apply(p.path(), op);
        done.push(format!("  #{i} {} -> {}", ShowOp(op), show_result(&kr)));
        if kr != pr {
            fail(
                &done,
                format!(
                    "at #{i} {}:\n    kernel: {}\n    {name}: {}",
                    ShowOp(op),
                    show_result(&kr),
                    show_result(&pr)
                ),
            );
        }
        if (i + 1) % check_every == 0 || i + 1 == ops.len() {
            let (a, b) = (
                snapshot(k.path(), SnapOpts::MERGED),
                snapshot(p.path(), SnapOpts::MERGED),
            );
            if let Some(d) = diff("kernel", &a, &name, &b) {
                fail(&done, format!("in the merged tree after #{i}:\n{d}"));
            }
        }
        if remount_every.is_some_and(|n| (i + 1) % n == 0) {
            k.unmount();
            p.unmount();
            k.mount_again(Backend::Kernel, false);
            p.mount_again(strata.clone(), false);
            done.push("  -- both unmounted and mounted again --".to_string());
            let (a, b) = (
                snapshot(k.path(), SnapOpts::MERGED),
                snapshot(p.path(), SnapOpts::MERGED),
            );
            if let Some(d) = diff("kernel", &a, &name, &b) {
                fail(
                    &done,
                    format!("in the merged tree after remounting at #{i}:\n{d}"),
                );
            }
        }
    }
    k.unmount();
    p.unmount();
    if k.has_upper() {
        let uppers: Vec<Snapshot> = [&k, &p]
            .iter()
            .map(|m| {
                let lowers: Vec<Snapshot> = m
                    .lowers()
                    .iter()
                    .map(|l| snapshot(l, SnapOpts::LAYER))
                    .collect();
                let mut u = snapshot(m.upper(), SnapOpts::LAYER);
                normalize_upper(&mut u, &lowers);
                u
            })
            .collect();
        if let Some(d) = diff("kernel", &uppers[0], &name, &uppers[1]) {
            fail(&done, format!("in the upper directory at the end:\n{d}"));
        }
    }
}
