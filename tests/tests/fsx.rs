//! fsx-style data checks: seeded random writes, reads, truncates and mmap
//! I/O on one lower file through several descriptors, each read compared
//! with an in-memory model of what the file must hold. The descriptors are
//! the hard cases of a union filesystem: one opened read-only before the
//! copy-up (it must see every later write), the writer that copied the file
//! up, one opened after, short-lived writers, and shared mappings. Run on
//! the kernel's overlayfs too, which checks the checker.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;

use strata_tests::random::Rng;
use strata_tests::{Backend, Layers, Mounted};

/// The file never grows past this.
const MAX_LEN: u64 = 1 << 20;
const OPS: usize = 1500;

/// `Rng::below` for file offsets and sizes.
fn below(rng: &mut Rng, n: u64) -> u64 {
    rng.below(n as usize) as u64
}

fn initial() -> Vec<u8> {
    let mut rng = Rng(0x5eed);
    (0..300_000).map(|_| rng.bits() as u8).collect()
}

struct Check<'a> {
    m: &'a Mounted,
    model: Vec<u8>,
    /// Opened read-only before anything wrote: held across the copy-up.
    early: Option<File>,
    rw: File,
    late: File,
    seed: u64,
    step: usize,
}

impl Check<'_> {
    fn fail(&self, what: String) -> ! {
        panic!(
            "{} (seed {}, step {}): {what}",
            self.m.backend().name(),
            self.seed,
            self.step
        )
    }

    fn check_read(&self, f: &File, name: &str, off: u64, len: usize) {
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            match f.read_at(&mut buf[got..], off + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => self.fail(format!("{name}: pread({off}, {len}): {e}")),
            }
        }
        let start = (off as usize).min(self.model.len());
        let want = &self.model[start..(start + len).min(self.model.len())];
        if &buf[..got] != want {
            let first = buf[..got]
                .iter()
                .zip(want)
                .position(|(a, b)| a != b)
                .unwrap_or(got.min(want.len()));
            self.fail(format!(
                "{name}: pread({off}, {len}) gave {got} bytes, the model {}; first difference at +{first}",
                want.len()
            ));
        }
    }

    fn write(&mut self, rng: &mut Rng) {
        let size = self.model.len() as u64;
        let off = below(rng, (size + 65_536).min(MAX_LEN));
        let len = (1 + below(rng, 65_535)).min(MAX_LEN - off).max(1) as usize;
        let byte = rng.bits() as u8;
        let data: Vec<u8> = (0..len).map(|i| byte.wrapping_add(i as u8)).collect();
        let res = if below(rng, 3) == 0 {
            OpenOptions::new()
                .write(true)
                .open(self.m.join("f"))
                .and_then(|f| f.write_all_at(&data, off))
        } else {
            self.rw.write_all_at(&data, off)
        };
        if let Err(e) = res {
            self.fail(format!("pwrite({off}, {len}): {e}"));
        }
        let end = off as usize + len;
        if end > self.model.len() {
            self.model.resize(end, 0);
        }
        self.model[off as usize..end].copy_from_slice(&data);
    }

    fn read(&self, rng: &mut Rng) {
        let off = below(rng, self.model.len() as u64 + 100);
        let len = 1 + below(rng, 70_000) as usize;
        match below(rng, 3) {
            0 => match &self.early {
                Some(f) => self.check_read(f, "fd opened before the copy-up", off, len),
                None => self.check_read(&self.late, "fd opened after the copy-up", off, len),
            },
            1 => self.check_read(&self.rw, "the writer's fd", off, len),
            _ => self.check_read(&self.late, "fd opened after the copy-up", off, len),
        }
    }

    fn truncate(&mut self, rng: &mut Rng) {
        let new = below(rng, MAX_LEN);
        if let Err(e) = self.rw.set_len(new) {
            self.fail(format!("ftruncate({new}): {e}"));
        }
        self.model.resize(new as usize, 0);
    }

    fn map(&mut self, rng: &mut Rng, write: bool) {
        let size = self.model.len();
        if size == 0 {
            return;
        }
        let off = below(rng, size as u64) as usize;
        let len = (1 + below(rng, 8191) as usize).min(size - off);
        // SAFETY: the mapping lives within this call; nothing truncates the
        // file meanwhile.
        let mut map = unsafe { memmap2::MmapOptions::new().len(size).map_mut(&self.rw) }
            .unwrap_or_else(|e| self.fail(format!("mmap: {e}")));
        if write {
            let byte = rng.bits() as u8;
            map[off..off + len].fill(byte);
            if let Err(e) = map.flush() {
                self.fail(format!("msync: {e}"));
            }
            self.model[off..off + len].fill(byte);
        } else if map[off..off + len] != self.model[off..off + len] {
            self.fail(format!("mmap read ({off}, {len}) differs from the model"));
        }
    }

    fn sizes(&self) {
        let want = self.model.len() as u64;
        let fds = [
            ("fd opened before the copy-up", self.early.as_ref()),
            ("the writer's fd", Some(&self.rw)),
            ("fd opened after the copy-up", Some(&self.late)),
        ];
        for (name, f) in fds {
            let Some(f) = f else { continue };
            let got = f.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
            if got != want {
                self.fail(format!("fstat of {name}: size {got}, the model {want}"));
            }
        }
        let got = std::fs::metadata(self.m.join("f"))
            .map(|m| m.len())
            .unwrap_or(u64::MAX);
        if got != want {
            self.fail(format!("stat: size {got}, the model {want}"));
        }
    }
}

fn run(backend: Backend, seed: u64, extra: Option<&str>, early_reader: bool) {
    let layers = Layers::new().lower(|l| l.file("f", initial()));
    let mut m = layers.materialize(backend.is_kernel());
    m.set_extra_options(extra);
    m.mount_again(backend, false);
    let early = early_reader.then(|| File::open(m.join("f")).unwrap());
    let rw = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.join("f"))
        .unwrap();
    let late = File::open(m.join("f")).unwrap();
    let mut c = Check {
        m: &m,
        model: initial(),
        early,
        rw,
        late,
        seed,
        step: 0,
    };
    let mut rng = Rng(seed);
    for step in 0..OPS {
        c.step = step;
        match below(&mut rng, 10) {
            0..=2 => c.write(&mut rng),
            3..=5 => c.read(&mut rng),
            6 => c.truncate(&mut rng),
            7 => c.map(&mut rng, true),
            8 => c.map(&mut rng, false),
            _ => {
                c.sizes();
                c.late = File::open(m.join("f")).unwrap();
            }
        }
    }
    c.sizes();
    let len = c.model.len() + 10;
    if let Some(f) = &c.early {
        c.check_read(f, "final, fd opened before the copy-up", 0, len);
    }
    c.check_read(&c.rw, "final, the writer's fd", 0, len);
    let fresh = File::open(m.join("f")).unwrap();
    c.check_read(&fresh, "final, a fresh fd", 0, len);
    drop(fresh);
    drop(c);
    m.unmount();
}

#[test]
fn fsx_with_a_reader_held_across_the_copy_up() {
    for seed in [1, 2, 3] {
        run(Backend::Kernel, seed, None, true);
        run(Backend::strata(), seed, None, true);
    }
}

#[test]
fn fsx_with_nothing_open_at_the_copy_up() {
    for seed in [4, 5] {
        run(Backend::Kernel, seed, None, false);
        run(Backend::strata(), seed, None, false);
    }
}

#[test]
fn fsx_without_passthrough_and_with_metacopy() {
    run(Backend::strata(), 6, Some("passthrough=0"), true);
    run(Backend::strata(), 7, Some("metacopy=on"), false);
}
