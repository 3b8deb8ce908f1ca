//! Generated scripts for the lockstep differential test: a seeded random
//! mix of every operation over a small set of names.

use nix::fcntl::RenameFlags;

use crate::fixture::Layers;
use crate::ops::Op;

/// A small xorshift generator: deterministic, no dependency. The seed must
/// not be zero.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn bits(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.bits() % (n as u64).max(1)) as usize
    }
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }
}

/// The names scripts use: in lowers, the upper, both, neither.
const PATHS: &[&str] = &[
    "a", "b", "c", "d", "d/a", "d/b", "d/e", "d/e/a", "e", "e/a", "e/b", "f", "f/a", "g", "o",
    "o/a", "o/x",
];

/// The data scripts write.
const DATA: &[&[u8]] = &[
    b"",
    b"x",
    b"hello\n",
    b"a longer line of data that spans more\n",
];

/// Two lowers and an upper holding some of [`PATHS`] in every form:
/// files, a symlink, whiteouts (lower and upper), an opaque directory, an
/// xattr, a fifo.
pub fn layers() -> Layers {
    Layers::new()
        .lower(|l| {
            l.file("a", "bottom a\n")
                .file("d/a", "bottom d/a\n")
                .file("d/e/a", "deep\n")
                .file("e/a", "e/a\n")
                .file("e/b", "e/b\n")
                .file("o/x", "hidden by opaque\n")
                .file("g", "g\n")
                .xattr("g", "user.g", "1")
                .file("d/e/b", "whited out in the upper\n")
                .file("p/q/r", "deep\n")
        })
        .lower(|l| {
            l.file("b", "top b\n")
                .file("d/b", "top d/b\n")
                .whiteout("g")
                .opaque("o")
                .file("o/a", "o/a\n")
                .symlink("c", "a")
        })
        .upper(|u| {
            u.file("a", "upper a\n")
                .dir("f")
                .file("f/a", "f/a\n")
                .whiteout("d/e/b")
                .fifo("h")
        })
}

/// `n` operations drawn from every kind, deterministic for a seed.
pub fn random_script(seed: u64, n: usize) -> Vec<Op> {
    let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let flags = [
        RenameFlags::empty(),
        RenameFlags::RENAME_NOREPLACE,
        RenameFlags::RENAME_EXCHANGE,
    ];
    (0..n)
        .map(|_| {
            let p = r.pick(PATHS);
            let q = r.pick(PATHS);
            let data = DATA[r.below(DATA.len())];
            match r.below(24) {
                0 => Op::Create(p, 0o644, data),
                1 => Op::Write(p, r.below(8) as u64, data),
                2 => Op::Append(p, data),
                3 => Op::Truncate(p, r.below(12) as u64),
                4 => Op::Rewrite(p, data),
                5 | 6 => Op::Read(p),
                7 => Op::List(p),
                8 => Op::Stat(p),
                9 => Op::Mkdir(p, 0o755),
                10 => Op::Rmdir(p),
                11 => Op::Unlink(p),
                12 | 13 => Op::Rename(p, q, flags[r.below(3)]),
                14 => Op::Link(p, q),
                15 => Op::Symlink(r.pick(PATHS), p),
                16 => Op::Chmod(p, [0o600, 0o755, 0o640][r.below(3)]),
                17 => Op::Chown(p, r.below(3) as u32 * 1000, 7),
                18 => Op::SetXattr(p, "user.k", data),
                19 => Op::RemoveXattr(p, r.pick(&["user.k", "user.g"])),
                20 => Op::RmRf(p),
                21 => Op::Mkfifo(p, 0o644),
                22 => Op::Mknod(p, 0o644, 1, 3),
                _ => Op::Utimes(p, 1_300_000_000, 1_400_000_000 + r.below(1000) as i64),
            }
        })
        .collect()
}
