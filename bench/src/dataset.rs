//! The data sets: layer stacks, their merged copies (for the `native`
//! driver) and the tarball, generated deterministically under one directory
//! and reused across runs.
//!
//! Layout under `DATA/<version>-<scale>/`:
//!
//! ```text
//! <stack>/layers/0 ... layers/N-1   lower layers, 0 at the bottom
//! <stack>/native/                    the merged view, a plain directory
//! <stack>/manifest                   regular files of the merged view (some stacks)
//! <stack>/STAMP                      written last: the generator version and sizes
//! tarball/tarball.tar, tarball/STAMP
//! ```
//!
//! A stack whose STAMP is missing or differs is generated again from
//! scratch (into `<stack>.tmp`, renamed into place), so an interrupted
//! generation is never mistaken for a finished one. The same seed and sizes
//! give the same names, sizes and contents on every machine.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{io_err, BenchError, Result};
use crate::process;
use crate::sys;

/// Bumped whenever generation changes, so old data sets are rebuilt.
pub const GENERATOR_VERSION: u32 = 2;

/// How big the data sets are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sizes {
    /// Name of this scale (a directory name under the data directory).
    pub scale: &'static str,
    /// Small files in each of the l1, l16 and l127 stacks.
    pub small_files: usize,
    /// Entries of the `rmtree` directory in the l16 stack.
    pub rm_entries: usize,
    /// Entries of `dir` in the bigdir stack's bottom layer (the top adds 1%).
    pub bigdir_entries: usize,
    /// Size of the big lower file.
    pub blob_bytes: u64,
    /// Number and size of the files chmod1000 changes.
    pub chmod_files: usize,
    pub chmod_file_bytes: usize,
    /// Files of the git source tree.
    pub src_files: usize,
    /// C files of the make project.
    pub make_units: usize,
    /// Bytes of file data in the tarball.
    pub tar_bytes: u64,
    /// Files created by create_storm, and lower files deleted by unlink_storm.
    pub storm_files: usize,
    /// 4 KiB random reads of randread.
    pub randread_ops: usize,
    /// Directories, and empty files in each, of the walk1m tree.
    pub walk_dirs: usize,
    pub walk_files_per_dir: usize,
}

impl Sizes {
    /// The sizes the issue asks for: what a reader of the results compares.
    pub fn full() -> Self {
        Sizes {
            scale: "full",
            small_files: 50_000,
            rm_entries: 4_000,
            bigdir_entries: 100_000,
            blob_bytes: 1 << 30,
            chmod_files: 1000,
            chmod_file_bytes: 64 << 10,
            src_files: 20_000,
            make_units: 40,
            tar_bytes: 100 << 20,
            storm_files: 20_000,
            randread_ops: 8192,
            walk_dirs: 1000,
            walk_files_per_dir: 1000,
        }
    }

    /// Tiny sizes for `--quick`: every code path, in seconds.
    pub fn quick() -> Self {
        Sizes {
            scale: "quick",
            small_files: 400,
            rm_entries: 60,
            bigdir_entries: 300,
            blob_bytes: 4 << 20,
            chmod_files: 20,
            chmod_file_bytes: 4 << 10,
            src_files: 100,
            make_units: 3,
            tar_bytes: 256 << 10,
            storm_files: 100,
            randread_ops: 64,
            walk_dirs: 10,
            walk_files_per_dir: 30,
        }
    }
}

/// The layer stacks the workloads mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StackId {
    /// One layer of small files.
    L1,
    /// The same number of small files spread over 16 layers (with
    /// overrides and whiteouts), plus `rmtree/`.
    L16,
    /// Small files spread over 127 layers, the most an image may have.
    L127,
    /// One layer holding `big/blob`, the big file.
    Big,
    /// One layer of `chmod/fNNNN` files.
    Chmod,
    /// `dir/` with many entries, in two layers.
    Bigdir,
    /// A git repository of a source tree (`repo/`).
    Src,
    /// A small C project (`proj/`). Apart from the git repository: a
    /// hard-linked copy of a tree (native make) changes its files' ctime,
    /// which would make git re-read every file of a shared repository.
    Proj,
    /// `walk/dNNN/fNNNN`: a million empty files in one layer.
    Million,
}

impl StackId {
    /// The stack's directory name.
    pub fn name(self) -> &'static str {
        match self {
            StackId::L1 => "l1",
            StackId::L16 => "l16",
            StackId::L127 => "l127",
            StackId::Big => "big",
            StackId::Chmod => "chmod",
            StackId::Bigdir => "bigdir",
            StackId::Src => "src",
            StackId::Proj => "proj",
            StackId::Million => "million",
        }
    }

    fn layers(self) -> usize {
        match self {
            StackId::L1
            | StackId::Big
            | StackId::Chmod
            | StackId::Src
            | StackId::Proj
            | StackId::Million => 1,
            StackId::L16 => 16,
            StackId::L127 => 127,
            StackId::Bigdir => 2,
        }
    }
}

impl fmt::Display for StackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A generated layer stack on disk.
#[derive(Debug, Clone)]
pub struct Stack {
    pub id: StackId,
    /// The stack's directory.
    pub dir: PathBuf,
    /// Number of lower layers.
    pub layers: usize,
}

impl Stack {
    /// Directory holding the layers, named `0` (bottom) to `N-1` (top).
    pub fn layers_dir(&self) -> PathBuf {
        self.dir.join("layers")
    }
    /// Absolute lower directories, topmost first (as `lowerdir=` wants them).
    pub fn lowers_top_first(&self) -> Vec<PathBuf> {
        (0..self.layers)
            .rev()
            .map(|i| self.layers_dir().join(i.to_string()))
            .collect()
    }
    /// Lower directory names relative to [`Stack::layers_dir`], topmost first.
    pub fn relative_lowers_top_first(&self) -> Vec<String> {
        (0..self.layers).rev().map(|i| i.to_string()).collect()
    }
    /// The merged view as a plain directory.
    pub fn native(&self) -> PathBuf {
        self.dir.join("native")
    }
    /// Relative paths of the merged view's regular files, sorted.
    pub fn manifest(&self) -> Result<Vec<String>> {
        let p = self.dir.join("manifest");
        let text = fs::read_to_string(&p).map_err(io_err("read", &p))?;
        Ok(text.lines().map(str::to_string).collect())
    }
}

/// The data directory for one scale: finds or generates stacks.
#[derive(Debug, Clone)]
pub struct DataSet {
    pub root: PathBuf,
    pub sizes: Sizes,
}

impl DataSet {
    /// The data set of `sizes` under `data_dir` (nothing is generated yet).
    pub fn new(data_dir: &Path, sizes: Sizes) -> Self {
        let root = data_dir.join(format!("v{GENERATOR_VERSION}-{}", sizes.scale));
        DataSet { root, sizes }
    }

    fn stamp(&self, what: &str) -> String {
        format!(
            "strata-bench data set, generator v{GENERATOR_VERSION}, {what}\n{:?}\n",
            self.sizes
        )
    }

    /// Returns `stack`, generating it first unless a finished copy exists.
    /// `note` is told when generation starts (it can take minutes).
    pub fn stack(&self, id: StackId, note: &mut dyn FnMut(&str)) -> Result<Stack> {
        let dir = self.root.join(id.name());
        let stack = Stack {
            id,
            dir: dir.clone(),
            layers: id.layers(),
        };
        let stamp = self.stamp(id.name());
        if fs::read_to_string(dir.join("STAMP")).ok().as_deref() == Some(stamp.as_str()) {
            return Ok(stack);
        }
        note(&format!("generating data set {id} in {}", dir.display()));
        let tmp = self.root.join(format!("{}.tmp", id.name()));
        remove_all(&tmp)?;
        remove_all(&dir)?;
        mkdirs(&tmp.join("layers"))?;
        let tmp_stack = Stack {
            dir: tmp.clone(),
            ..stack.clone()
        };
        let mut g = Gen::new(0x5747_4154_4100 + id as u64);
        let manifest = match id {
            StackId::L1 | StackId::L16 | StackId::L127 => {
                let mut files = g.small_tree(&tmp_stack, self.sizes.small_files)?;
                if id == StackId::L16 {
                    g.rm_tree(&tmp_stack, self.sizes.rm_entries)?;
                }
                files.sort();
                Some(files)
            }
            StackId::Big => {
                g.blob(&tmp_stack, self.sizes.blob_bytes)?;
                None
            }
            StackId::Chmod => {
                g.chmod_files(&tmp_stack, &self.sizes)?;
                None
            }
            StackId::Bigdir => {
                g.bigdir(&tmp_stack, self.sizes.bigdir_entries)?;
                None
            }
            StackId::Src => {
                g.source_repo(&tmp_stack, &self.sizes)?;
                None
            }
            StackId::Proj => {
                g.c_project(&tmp_stack, &self.sizes)?;
                None
            }
            StackId::Million => {
                g.million(&tmp_stack, &self.sizes)?;
                None
            }
        };
        if let Some(files) = manifest {
            let p = tmp.join("manifest");
            let mut text = files.join("\n");
            text.push('\n');
            fs::write(&p, text).map_err(io_err("write", &p))?;
        }
        merge_layers(
            &tmp_stack.layers_dir(),
            tmp_stack.layers,
            &tmp_stack.native(),
        )?;
        if id == StackId::Src {
            // The copy has new inode numbers: let git record them, as it
            // would have in a checkout made in place.
            git(&tmp_stack.native().join("repo"), &["status", "--porcelain"])?;
        }
        let p = tmp.join("STAMP");
        fs::write(&p, &stamp).map_err(io_err("write", &p))?;
        sys::sync();
        fs::rename(&tmp, &dir).map_err(io_err("rename into place", &dir))?;
        Ok(stack)
    }

    /// The tarball that tarx extracts, generated first unless present.
    pub fn tarball(&self, note: &mut dyn FnMut(&str)) -> Result<PathBuf> {
        let dir = self.root.join("tarball");
        let file = dir.join("tarball.tar");
        let stamp = self.stamp("tarball");
        if fs::read_to_string(dir.join("STAMP")).ok().as_deref() == Some(stamp.as_str()) {
            return Ok(file);
        }
        note(&format!("generating the tarball in {}", dir.display()));
        remove_all(&dir)?;
        mkdirs(&dir)?;
        Gen::new(0x7a7a).tarball(&file, self.sizes.tar_bytes)?;
        let p = dir.join("STAMP");
        fs::write(&p, &stamp).map_err(io_err("write", &p))?;
        Ok(file)
    }
}

/// The contents of the first 4 KiB of the big file: copyup writes these same
/// bytes, so the file's contents never change.
pub fn blob_head() -> Vec<u8> {
    Gen::new(0).pool[..4096].to_vec()
}

/// A deterministic generator: splitmix64 and a pool of text to cut file
/// contents from.
pub(crate) struct Gen {
    state: u64,
    pool: Vec<u8>,
}

const POOL: usize = 1 << 20;

impl Gen {
    pub(crate) fn new(seed: u64) -> Self {
        // The pool is the same for every seed: printable text lines.
        let mut g = Gen {
            state: 0x0123_4567_89ab_cdef,
            pool: Vec::new(),
        };
        let mut pool = Vec::with_capacity(POOL * 2);
        const WORDS: &[&str] = &[
            "int", "return", "static", "struct", "layer", "copy", "up", "whiteout", "if", "else",
            "for", "(x)", "{", "}", "0;", "buf", "len", "node", "=", "+", "->", "*p", "const",
        ];
        while pool.len() < POOL * 2 {
            let line_words = 3 + g.below(9);
            for w in 0..line_words {
                if w > 0 {
                    pool.push(b' ');
                }
                pool.extend_from_slice(WORDS[g.below(WORDS.len())].as_bytes());
            }
            pool.push(b'\n');
        }
        pool.truncate(POOL * 2);
        g.pool = pool;
        g.state = seed;
        g
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// `len` bytes of text from a random place in the pool.
    fn text(&mut self, len: usize) -> &[u8] {
        let len = len.min(POOL);
        let at = self.below(POOL);
        &self.pool[at..at + len]
    }

    /// A small-file size: mostly under 1 KiB, a few up to 64 KiB.
    fn small_size(&mut self) -> usize {
        match self.below(100) {
            0..=79 => self.below(1024),
            80..=97 => 1024 + self.below(7 * 1024),
            _ => 8192 + self.below(56 * 1024),
        }
    }

    fn write_file(&mut self, path: &Path, len: usize) -> Result<()> {
        let data = self.text(len).to_vec();
        write_new(path, &data)
    }

    /// ~`total` files in `dNN/dNN/` directories spread over the stack's
    /// layers. From the second layer on, 1% of each layer's share deletes a
    /// lower file (whiteout device) and 5% rewrites one. Returns the regular
    /// files of the merged view.
    fn small_tree(&mut self, stack: &Stack, total: usize) -> Result<Vec<String>> {
        let fan = if total >= 10_000 { 32 } else { 4 };
        let leaves: Vec<String> = (0..fan * fan)
            .map(|i| format!("d{:02}/d{:02}", i / fan, i % fan))
            .collect();
        let mut alive: Vec<String> = Vec::with_capacity(total);
        for layer in 0..stack.layers {
            let ldir = stack.layers_dir().join(layer.to_string());
            mkdirs(&ldir)?;
            let share = total / stack.layers + usize::from(layer < total % stack.layers);
            if layer > 0 && !alive.is_empty() {
                for _ in 0..share / 100 {
                    let victim = alive.swap_remove(self.below(alive.len()));
                    let p = ldir.join(&victim);
                    mkdirs(p.parent().expect("has parent"))?;
                    sys::mknod_whiteout(&p)?;
                    if alive.is_empty() {
                        break;
                    }
                }
                for _ in 0..share * 5 / 100 {
                    let path = alive[self.below(alive.len())].clone();
                    let p = ldir.join(&path);
                    if !p.exists() {
                        mkdirs(p.parent().expect("has parent"))?;
                        let len = self.small_size();
                        self.write_file(&p, len)?;
                    }
                }
            }
            for k in 0..share {
                let leaf = &leaves[self.below(leaves.len())];
                let rel = format!("{leaf}/f{layer:03}_{k:05}");
                let p = ldir.join(&rel);
                mkdirs(p.parent().expect("has parent"))?;
                let len = self.small_size();
                self.write_file(&p, len)?;
                alive.push(rel);
            }
        }
        Ok(alive)
    }

    /// `rmtree/`: `entries` directories and files spread over the layers.
    fn rm_tree(&mut self, stack: &Stack, entries: usize) -> Result<()> {
        let (top, sub) = if entries >= 1000 { (20, 10) } else { (3, 3) };
        let dirs: Vec<String> = (0..top)
            .flat_map(|a| (0..sub).map(move |b| format!("rmtree/r{a:02}/r{b:02}")))
            .collect();
        let files = entries.saturating_sub(1 + top + top * sub);
        for k in 0..files {
            let layer = self.below(stack.layers);
            let rel = format!("{}/g{k:05}", dirs[self.below(dirs.len())]);
            let p = stack.layers_dir().join(layer.to_string()).join(rel);
            mkdirs(p.parent().expect("has parent"))?;
            let len = self.below(2048);
            self.write_file(&p, len)?;
        }
        // Every directory exists somewhere, even one that got no file.
        for d in &dirs {
            mkdirs(&stack.layers_dir().join("0").join(d))?;
        }
        Ok(())
    }

    /// `big/blob`: `bytes` of text whose first 4 KiB are [`blob_head`].
    fn blob(&mut self, stack: &Stack, bytes: u64) -> Result<()> {
        let dir = stack.layers_dir().join("0/big");
        mkdirs(&dir)?;
        let p = dir.join("blob");
        let mut f = fs::File::create(&p).map_err(io_err("create", &p))?;
        let chunk = 1 << 20;
        let mut written = 0u64;
        let mut first = true;
        while written < bytes {
            let n = chunk.min((bytes - written) as usize);
            let data = if first {
                first = false;
                &self.pool[..n]
            } else {
                self.text(n)
            };
            f.write_all(data).map_err(io_err("write", &p))?;
            written += n as u64;
        }
        f.sync_all().map_err(io_err("fsync", &p))
    }

    fn chmod_files(&mut self, stack: &Stack, sizes: &Sizes) -> Result<()> {
        let dir = stack.layers_dir().join("0/chmod");
        mkdirs(&dir)?;
        for k in 0..sizes.chmod_files {
            self.write_file(&dir.join(format!("f{k:04}")), sizes.chmod_file_bytes)?;
        }
        Ok(())
    }

    /// `walk/dNNN/fNNNN`: `walk_dirs` directories of `walk_files_per_dir`
    /// empty files.
    fn million(&mut self, stack: &Stack, sizes: &Sizes) -> Result<()> {
        for d in 0..sizes.walk_dirs {
            let dir = stack.layers_dir().join(format!("0/walk/d{d:04}"));
            mkdirs(&dir)?;
            for k in 0..sizes.walk_files_per_dir {
                write_new(&dir.join(format!("f{k:04}")), b"")?;
            }
        }
        Ok(())
    }

    /// `dir/` with `entries` empty files in layer 0 and 1% more in layer 1.
    fn bigdir(&mut self, stack: &Stack, entries: usize) -> Result<()> {
        for (layer, n, prefix) in [(0, entries, "e"), (1, entries / 100, "n")] {
            let dir = stack.layers_dir().join(format!("{layer}/dir"));
            mkdirs(&dir)?;
            for k in 0..n {
                write_new(&dir.join(format!("{prefix}{k:06}")), b"")?;
            }
        }
        Ok(())
    }

    /// `repo/`: a git repository of a source tree.
    fn source_repo(&mut self, stack: &Stack, sizes: &Sizes) -> Result<()> {
        let layer = stack.layers_dir().join("0");
        let repo = layer.join("repo");
        let per_dir = 20;
        let dirs = sizes.src_files.div_ceil(per_dir);
        for k in 0..sizes.src_files {
            let d = k % dirs;
            let ext = if k % 3 == 0 { "h" } else { "c" };
            let p = repo.join(format!(
                "src/m{:02}/s{:03}/file{k:05}.{ext}",
                d / 40,
                d % 40
            ));
            mkdirs(p.parent().expect("has parent"))?;
            let len = 200 + self.below(4000);
            self.write_file(&p, len)?;
        }
        git(&repo, &["init", "-q"])?;
        // No automatic gc: a detached one would pack objects while the
        // merged copy is being made. Pack now, as a clone would be.
        git(&repo, &["config", "gc.auto", "0"])?;
        git(&repo, &["add", "-A"])?;
        git(&repo, &["commit", "-q", "-m", "source tree"])?;
        git(&repo, &["gc", "-q"])?;
        // Files written in the same second as the index are "racily clean"
        // and would be re-read by every `git status`: refresh the index a
        // second later, as a checkout that is not brand-new would have it.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        git(&repo, &["status", "--porcelain"])
    }

    /// `proj/`: a C project of `make_units` units, a main and a Makefile.
    fn c_project(&mut self, stack: &Stack, sizes: &Sizes) -> Result<()> {
        let proj = stack.layers_dir().join("0/proj");
        mkdirs(&proj)?;
        let mut objs = Vec::new();
        let mut main = String::from("#include \"units.h\"\nint main(void) {\n    long s = 0;\n");
        let mut header = String::new();
        for u in 0..sizes.make_units {
            let mut c = String::from("#include \"units.h\"\n");
            for f in 0..30 {
                c.push_str(&format!(
                    "long unit{u}_f{f}(long x) {{\n    long acc = x;\n    for (int i = 0; i < {n}; i++) {{\n        acc = acc * 31 + i - (acc >> 3);\n        if (acc % 7 == {r}) acc ^= 0x5bd1e995;\n    }}\n    return acc;\n}}\n",
                    n = 10 + self.below(90),
                    r = self.below(7)
                ));
                header.push_str(&format!("long unit{u}_f{f}(long x);\n"));
            }
            write_new(&proj.join(format!("unit{u}.c")), c.as_bytes())?;
            objs.push(format!("unit{u}.o"));
            main.push_str(&format!("    s += unit{u}_f0(s);\n"));
        }
        main.push_str("    return (int)(s & 1);\n}\n");
        write_new(&proj.join("units.h"), header.as_bytes())?;
        write_new(&proj.join("main.c"), main.as_bytes())?;
        let makefile = format!(
            "CFLAGS = -O2 -Wall\nOBJS = main.o {}\n\nprog: $(OBJS)\n\t$(CC) -o $@ $(OBJS)\n\n%.o: %.c units.h\n\t$(CC) $(CFLAGS) -c -o $@ $<\n",
            objs.join(" ")
        );
        write_new(&proj.join("Makefile"), makefile.as_bytes())
    }

    /// An uncompressed tar of many small files (`tarx/dNN/fNNNNN`) holding
    /// `bytes` of data, with fixed owners, modes and times.
    fn tarball(&mut self, file: &Path, bytes: u64) -> Result<()> {
        let f = fs::File::create(file).map_err(io_err("create", file))?;
        let mut b = tar::Builder::new(std::io::BufWriter::new(f));
        let dirs = 100;
        let header = |kind: tar::EntryType, mode: u32, size: u64| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(size);
            h.set_mtime(1_700_000_000);
            h.set_uid(0);
            h.set_gid(0);
            h
        };
        let werr = io_err("write", file);
        let add = |b: &mut tar::Builder<_>, mut h: tar::Header, path: &str, data: &[u8]| {
            b.append_data(&mut h, path, data)
        };
        let res = (|| -> std::io::Result<()> {
            add(
                &mut b,
                header(tar::EntryType::Directory, 0o755, 0),
                "tarx/",
                &[],
            )?;
            for d in 0..dirs {
                let h = header(tar::EntryType::Directory, 0o755, 0);
                add(&mut b, h, &format!("tarx/d{d:02}/"), &[])?;
            }
            let mut total = 0u64;
            let mut k = 0usize;
            while total < bytes {
                let len = match self.below(100) {
                    0..=59 => self.below(4096),
                    60..=94 => 4096 + self.below(28 * 1024),
                    _ => 32 * 1024 + self.below(96 * 1024),
                };
                let data = self.text(len).to_vec();
                let h = header(tar::EntryType::Regular, 0o644, len as u64);
                add(&mut b, h, &format!("tarx/d{:02}/f{k:06}", k % dirs), &data)?;
                total += len as u64;
                k += 1;
            }
            b.finish()
        })();
        res.map_err(werr)
    }
}

/// Runs git in `dir` with a fixed identity and no user or system config.
pub(crate) fn git(dir: &Path, args: &[&str]) -> Result<()> {
    let mut cmd = git_command(dir);
    cmd.args(args);
    process::run(&mut cmd)
}

/// A `git -C dir` command isolated from the user's and system's config.
pub(crate) fn git_command(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.arg("-C")
        .arg(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "strata-bench")
        .env("GIT_AUTHOR_EMAIL", "bench@strata.invalid")
        .env("GIT_AUTHOR_DATE", "2024-01-01T00:00:00Z")
        .env("GIT_COMMITTER_NAME", "strata-bench")
        .env("GIT_COMMITTER_EMAIL", "bench@strata.invalid")
        .env("GIT_COMMITTER_DATE", "2024-01-01T00:00:00Z");
    cmd
}

fn write_new(path: &Path, data: &[u8]) -> Result<()> {
    fs::write(path, data).map_err(io_err("write", path))
}

fn mkdirs(path: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .map_err(io_err("mkdir", path))
}

/// Removes `path` and everything below it; a missing path is fine.
pub fn remove_all(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("stat", path)(e)),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(io_err("remove", path)),
        Ok(_) => fs::remove_file(path).map_err(io_err("remove", path)),
    }
}

/// Writes the merged view of `layers` (named `0`..`n-1`, bottom first)
/// into `dest`, as overlayfs shows it: upper entries replace lower ones,
/// whiteout devices delete, `trusted.overlay.opaque` directories hide what
/// is below. Only what the generators write is handled: directories,
/// regular files, symlinks and whiteouts.
fn merge_layers(layers: &Path, n: usize, dest: &Path) -> Result<()> {
    mkdirs(dest)?;
    for i in 0..n {
        merge_dir(&layers.join(i.to_string()), dest)?;
    }
    Ok(())
}

fn merge_dir(src: &Path, dest: &Path) -> Result<()> {
    let entries = fs::read_dir(src).map_err(io_err("read directory", src))?;
    for e in entries {
        let e = e.map_err(io_err("read directory", src))?;
        let from = e.path();
        let to = dest.join(e.file_name());
        let m = fs::symlink_metadata(&from).map_err(io_err("stat", &from))?;
        let ft = m.file_type();
        if ft.is_char_device() {
            remove_all(&to)?;
        } else if ft.is_dir() {
            match fs::symlink_metadata(&to) {
                Ok(t) if t.is_dir() => {}
                Ok(_) => remove_all(&to)?,
                Err(_) => {}
            }
            mkdirs(&to)?;
            fs::set_permissions(&to, m.permissions()).map_err(io_err("chmod", &to))?;
            merge_dir(&from, &to)?;
        } else if ft.is_symlink() {
            remove_all(&to)?;
            let target = fs::read_link(&from).map_err(io_err("readlink", &from))?;
            std::os::unix::fs::symlink(&target, &to).map_err(io_err("symlink", &to))?;
        } else if ft.is_file() {
            remove_all(&to)?;
            fs::copy(&from, &to).map_err(io_err("copy to", &to))?;
            let perm = fs::Permissions::from_mode(m.permissions().mode());
            fs::set_permissions(&to, perm).map_err(io_err("chmod", &to))?;
        }
    }
    Ok(())
}

/// Reads every regular file below `dir` once. Run before the first round
/// so that the virtual machine's host has the data sets in its cache for
/// every driver alike: otherwise the first driver to read a file after
/// generation pays for the host's disk, however the guest's cache is
/// dropped.
pub fn read_tree(dir: &Path) -> Result<()> {
    use std::io::Read;
    let mut buf = vec![0u8; 1 << 20];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).map_err(io_err("read directory", &d))? {
            let e = e.map_err(io_err("read directory", &d))?;
            let ft = e.file_type().map_err(io_err("stat", e.path()))?;
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                let p = e.path();
                let mut f = fs::File::open(&p).map_err(io_err("open", &p))?;
                while f.read(&mut buf).map_err(io_err("read", &p))? > 0 {}
            }
        }
    }
    Ok(())
}

/// Bytes of disk that `dir` and everything below it use (`du -s`).
pub fn disk_usage(dir: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::symlink_metadata(dir).map_err(io_err("stat", dir))?;
    let mut total = m.blocks() * 512;
    if m.is_dir() {
        for e in fs::read_dir(dir).map_err(io_err("read directory", dir))? {
            let e = e.map_err(io_err("read directory", dir))?;
            total += disk_usage(&e.path())?;
        }
    }
    Ok(total)
}

/// Checks that the programs generation needs are present.
pub fn check_tools() -> Result<()> {
    for tool in ["git", "cp"] {
        if process::find_program(tool).is_none() {
            return Err(BenchError::Check(format!(
                "{tool} is not installed; run scripts/setup"
            )));
        }
    }
    Ok(())
}
