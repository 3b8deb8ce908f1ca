//! The workloads: what each one mounts, prepares (untimed) and times.
//!
//! Each workload runs on a fresh mount with an empty upper layer (or, for
//! `native`, the merged copy, fresh when the workload changes it). Only
//! [`Workload::run`] is timed, except for the mount workloads, whose timed
//! part is the mount itself (the mount(2) call, or the mount program until
//! it exits) until the root answers a stat; creating the scratch
//! directories and finding the FUSE server's pid are not timed.

use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use crate::dataset::{blob_head, git_command, Gen, Sizes, StackId};
use crate::driver::NativeSetup;
use crate::error::{io_err, BenchError, Result};
use crate::process;

/// One benchmark workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Workload {
    Mount1,
    Mount1Cold,
    Mount127,
    StatColdL16,
    StatWarmL16,
    FindColdL1,
    Seqread,
    Randread,
    Copyup,
    Chmod1000,
    CreateStorm,
    UnlinkStorm,
    Rmlower,
    Tarx,
    ReaddirCold,
    ReaddirWarm,
    GitstatusCold,
    GitstatusWarm,
    Make,
    Walk1m,
}

/// Inputs some workloads need besides their stack, computed once per run.
#[derive(Debug, Default)]
pub struct Inputs {
    /// The tarball tarx extracts.
    pub tarball: Option<PathBuf>,
    /// The lower files unlink_storm deletes (relative to the root).
    pub unlink: Vec<String>,
}

/// What a workload runs against.
pub struct Ctx<'a> {
    /// The merged tree (mountpoint or native directory).
    pub root: &'a Path,
    pub sizes: &'a Sizes,
    pub inputs: &'a Inputs,
}

impl Workload {
    /// Every workload, in the order results list them.
    pub const ALL: [Workload; 20] = [
        Workload::Mount1,
        Workload::Mount1Cold,
        Workload::Mount127,
        Workload::StatColdL16,
        Workload::StatWarmL16,
        Workload::FindColdL1,
        Workload::Seqread,
        Workload::Randread,
        Workload::Copyup,
        Workload::Chmod1000,
        Workload::CreateStorm,
        Workload::UnlinkStorm,
        Workload::Rmlower,
        Workload::Tarx,
        Workload::ReaddirCold,
        Workload::ReaddirWarm,
        Workload::GitstatusCold,
        Workload::GitstatusWarm,
        Workload::Make,
        Workload::Walk1m,
    ];

    /// The name used on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Mount1 => "mount1",
            Workload::Mount1Cold => "mount1_cold",
            Workload::Mount127 => "mount127",
            Workload::StatColdL16 => "stat_cold_l16",
            Workload::StatWarmL16 => "stat_warm_l16",
            Workload::FindColdL1 => "find_cold_l1",
            Workload::Seqread => "seqread",
            Workload::Randread => "randread",
            Workload::Copyup => "copyup",
            Workload::Chmod1000 => "chmod1000",
            Workload::CreateStorm => "create_storm",
            Workload::UnlinkStorm => "unlink_storm",
            Workload::Rmlower => "rmlower",
            Workload::Tarx => "tarx",
            Workload::ReaddirCold => "readdir_cold",
            Workload::ReaddirWarm => "readdir_warm",
            Workload::GitstatusCold => "gitstatus_cold",
            Workload::GitstatusWarm => "gitstatus_warm",
            Workload::Make => "make",
            Workload::Walk1m => "walk1m",
        }
    }

    /// One line saying what is timed, for `--list` and the report.
    pub fn describe(self, s: &Sizes) -> String {
        match self {
            Workload::Mount1 => "mount 1 layer until the root answers a stat".into(),
            Workload::Mount1Cold => {
                "the same right after dropping the page cache: loading the mount program counts"
                    .into()
            }
            Workload::Mount127 => "mount 127 layers until the root answers a stat".into(),
            Workload::StatColdL16 => format!(
                "cold `find -printf %s` (stat of every entry), {} files in 16 layers",
                s.small_files
            ),
            Workload::StatWarmL16 => "the same, after one untimed run".into(),
            Workload::FindColdL1 => format!("cold `find`, {} files in 1 layer", s.small_files),
            Workload::Seqread => format!(
                "cold read of a {} MiB lower file, 1 MiB reads",
                s.blob_bytes >> 20
            ),
            Workload::Randread => format!(
                "{} cold 4 KiB preads at random offsets of it",
                s.randread_ops
            ),
            Workload::Copyup => {
                "open the big lower file for writing, write 4 KiB, fsync (cold)".into()
            }
            Workload::Chmod1000 => format!(
                "chmod of {} lower files of {} KiB",
                s.chmod_files,
                s.chmod_file_bytes >> 10
            ),
            Workload::CreateStorm => {
                format!("create {} small files in new directories", s.storm_files)
            }
            Workload::UnlinkStorm => {
                format!("unlink {} lower files of the 16-layer stack", s.storm_files)
            }
            Workload::Rmlower => format!(
                "`rm -rf` of a lower tree of {} entries in 16 layers",
                s.rm_entries
            ),
            Workload::Tarx => {
                let (n, unit) = if s.tar_bytes >= 1 << 20 {
                    (s.tar_bytes >> 20, "MiB")
                } else {
                    (s.tar_bytes >> 10, "KiB")
                };
                format!("`tar -xf` of a {n} {unit} tarball of small files")
            }
            Workload::ReaddirCold => format!(
                "cold `ls -f` of a directory of {} entries in 2 layers",
                s.bigdir_entries + s.bigdir_entries / 100
            ),
            Workload::ReaddirWarm => "`ls -fl` of it, after one untimed run".into(),
            Workload::GitstatusCold => format!("cold `git status`, {} files", s.src_files),
            Workload::GitstatusWarm => "`git status` after one untimed run".into(),
            Workload::Make => format!("`make -j2` of a C project of {} units", s.make_units + 1),
            Workload::Walk1m => format!(
                "`find -printf %s` (stat of every entry) over {} files in 1 layer: \
                 the peak RSS column shows what walking them costs the server",
                s.walk_dirs * s.walk_files_per_dir
            ),
        }
    }

    /// The stack it mounts.
    pub fn stack(self) -> StackId {
        match self {
            Workload::Mount1
            | Workload::Mount1Cold
            | Workload::FindColdL1
            | Workload::CreateStorm
            | Workload::Tarx => StackId::L1,
            Workload::Mount127 => StackId::L127,
            Workload::StatColdL16
            | Workload::StatWarmL16
            | Workload::UnlinkStorm
            | Workload::Rmlower => StackId::L16,
            Workload::Seqread | Workload::Randread | Workload::Copyup => StackId::Big,
            Workload::Chmod1000 => StackId::Chmod,
            Workload::ReaddirCold | Workload::ReaddirWarm => StackId::Bigdir,
            Workload::GitstatusCold | Workload::GitstatusWarm => StackId::Src,
            Workload::Make => StackId::Proj,
            Workload::Walk1m => StackId::Million,
        }
    }

    /// Whether the timed part is the mount itself.
    pub fn is_mount(self) -> bool {
        matches!(
            self,
            Workload::Mount1 | Workload::Mount1Cold | Workload::Mount127
        )
    }

    /// Whether the page cache (and dentries, inodes) is dropped right
    /// before the timed part.
    pub fn cold(self) -> bool {
        matches!(
            self,
            Workload::Mount1Cold
                | Workload::StatColdL16
                | Workload::FindColdL1
                | Workload::Seqread
                | Workload::Randread
                | Workload::Copyup
                | Workload::ReaddirCold
                | Workload::GitstatusCold
        )
    }

    /// What the `native` driver needs so that runs do not see each other's
    /// changes.
    pub fn native_setup(self) -> NativeSetup {
        match self {
            Workload::Chmod1000 => NativeSetup::Copied,
            Workload::CreateStorm
            | Workload::UnlinkStorm
            | Workload::Rmlower
            | Workload::Tarx
            | Workload::Make => NativeSetup::Linked,
            // copyup writes the bytes that are there; git status only
            // refreshes its index.
            _ => NativeSetup::Shared,
        }
    }

    /// Whether the upper layer's size is reported after the run.
    pub fn reports_upper(self) -> bool {
        matches!(self, Workload::Copyup | Workload::Chmod1000)
    }

    /// Untimed work on the fresh mount before the timed part.
    pub fn prepare(self, cx: &Ctx) -> Result<()> {
        match self {
            Workload::StatWarmL16 => self.run(cx),
            Workload::ReaddirWarm => self.run(cx),
            Workload::GitstatusWarm => self.run(cx),
            _ => Ok(()),
        }
    }

    /// The timed part.
    pub fn run(self, cx: &Ctx) -> Result<()> {
        let root = cx.root;
        match self {
            // The runner times the mount; this is the stat it waits for.
            Workload::Mount1 | Workload::Mount1Cold | Workload::Mount127 => {
                fs::metadata(root).map(drop).map_err(io_err("stat", root))
            }
            Workload::StatColdL16 | Workload::StatWarmL16 => {
                process::run(Command::new("find").arg(root).args(["-printf", "%s %m\n"]))
            }
            Workload::Walk1m => process::run(
                Command::new("find")
                    .arg(root.join("walk"))
                    .args(["-printf", "%s\n"]),
            ),
            Workload::FindColdL1 => process::run(Command::new("find").arg(root)),
            Workload::Seqread => seqread(&root.join("big/blob")),
            Workload::Randread => randread(&root.join("big/blob"), cx.sizes),
            Workload::Copyup => copyup(&root.join("big/blob")),
            Workload::Chmod1000 => {
                for k in 0..cx.sizes.chmod_files {
                    let p = root.join(format!("chmod/f{k:04}"));
                    fs::set_permissions(&p, fs::Permissions::from_mode(0o640))
                        .map_err(io_err("chmod", &p))?;
                }
                Ok(())
            }
            Workload::CreateStorm => create_storm(root, cx.sizes.storm_files),
            Workload::UnlinkStorm => {
                for rel in &cx.inputs.unlink {
                    let p = root.join(rel);
                    fs::remove_file(&p).map_err(io_err("unlink", &p))?;
                }
                Ok(())
            }
            Workload::Rmlower => {
                process::run(Command::new("rm").arg("-rf").arg(root.join("rmtree")))
            }
            Workload::Tarx => {
                let tarball = cx.inputs.tarball.as_ref().expect("tarball generated");
                process::run(
                    Command::new("tar")
                        .arg("-xf")
                        .arg(tarball)
                        .arg("-C")
                        .arg(root),
                )
            }
            Workload::ReaddirCold => {
                process::run(Command::new("ls").arg("-f").arg(root.join("dir")))
            }
            Workload::ReaddirWarm => {
                process::run(Command::new("ls").arg("-fl").arg(root.join("dir")))
            }
            Workload::GitstatusCold | Workload::GitstatusWarm => {
                process::run(git_command(&root.join("repo")).args(["status", "--porcelain"]))
            }
            Workload::Make => process::run(
                Command::new("make")
                    .args(["-s", "-j2", "-C"])
                    .arg(root.join("proj")),
            ),
        }
    }

    /// The files unlink_storm deletes: a deterministic sample of the
    /// stack's files.
    pub fn unlink_list(manifest: &[String], n: usize) -> Vec<String> {
        let mut idx: Vec<usize> = (0..manifest.len()).collect();
        let mut g = Gen::new(0x0dd);
        let n = n.min(idx.len());
        for i in 0..n {
            let j = i + g.below(idx.len() - i);
            idx.swap(i, j);
        }
        let mut pick: Vec<usize> = idx[..n].to_vec();
        pick.sort_unstable();
        pick.into_iter().map(|i| manifest[i].clone()).collect()
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Workload {
    type Err = BenchError;
    fn from_str(s: &str) -> Result<Self> {
        Workload::ALL
            .into_iter()
            .find(|w| w.name() == s.trim())
            .ok_or_else(|| BenchError::UnknownWorkload(s.to_string()))
    }
}

/// Parses `all` or a comma-separated list of workload names.
pub fn parse_list(s: &str) -> Result<Vec<Workload>> {
    if s.trim() == "all" {
        return Ok(Workload::ALL.to_vec());
    }
    let mut out: Vec<Workload> = s
        .split(',')
        .filter(|x| !x.trim().is_empty())
        .map(str::parse)
        .collect::<Result<_>>()?;
    out.sort();
    out.dedup();
    Ok(out)
}

fn seqread(p: &Path) -> Result<()> {
    let mut f = fs::File::open(p).map_err(io_err("open", p))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err("read", p))?;
        if n == 0 {
            return Ok(());
        }
    }
}

/// Like `fio --rw=randread --bs=4k --ioengine=psync --randrepeat=1`:
/// 4 KiB `pread`s at 4 KiB-aligned offsets from a fixed seed.
fn randread(p: &Path, s: &Sizes) -> Result<()> {
    let f = fs::File::open(p).map_err(io_err("open", p))?;
    let blocks = (s.blob_bytes / 4096).max(1) as usize;
    let mut g = Gen::new(0x4a4d);
    let mut buf = vec![0u8; 4096];
    for _ in 0..s.randread_ops {
        let off = g.below(blocks) as u64 * 4096;
        f.read_exact_at(&mut buf, off).map_err(io_err("pread", p))?;
    }
    Ok(())
}

/// The first write to a lower file: copy-up of the whole file, then 4 KiB
/// (the bytes already there) and fsync.
fn copyup(p: &Path) -> Result<()> {
    let f = fs::OpenOptions::new()
        .write(true)
        .open(p)
        .map_err(io_err("open for writing", p))?;
    f.write_all_at(&blob_head(), 0)
        .map_err(io_err("write", p))?;
    f.sync_all().map_err(io_err("fsync", p))
}

fn create_storm(root: &Path, n: usize) -> Result<()> {
    let base = root.join("storm");
    let per_dir = 1000;
    for d in 0..n.div_ceil(per_dir) {
        let dir = base.join(format!("d{d:02}"));
        fs::create_dir_all(&dir).map_err(io_err("mkdir", &dir))?;
        for k in d * per_dir..((d + 1) * per_dir).min(n) {
            let p = dir.join(format!("f{k:05}"));
            let mut f = fs::File::create_new(&p).map_err(io_err("create", &p))?;
            f.write_all(b"strata-bench create_storm: a small file\n")
                .map_err(io_err("write", &p))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_lists_parse() {
        for w in Workload::ALL {
            assert_eq!(w.name().parse::<Workload>().unwrap(), w);
        }
        assert_eq!(parse_list("all").unwrap().len(), Workload::ALL.len());
        assert_eq!(
            parse_list("tarx,mount1,tarx").unwrap(),
            [Workload::Mount1, Workload::Tarx]
        );
        assert!(parse_list("tarx,nope").is_err());
    }

    #[test]
    fn unlink_list_is_deterministic_and_sorted() {
        let m: Vec<String> = (0..100).map(|i| format!("f{i:03}")).collect();
        let a = Workload::unlink_list(&m, 10);
        assert_eq!(a, Workload::unlink_list(&m, 10));
        assert_eq!(a.len(), 10);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(Workload::unlink_list(&m, 1000).len(), 100);
    }
}
