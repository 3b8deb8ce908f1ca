//! Tar metadata bombs: a layer or image archive whose PAX or GNU long-name
//! headers would make the reader hold hundreds of MiB is refused with a
//! one-line error, and the process's peak memory stays small.
//!
//! Each case runs in a child process (this test binary re-run on
//! `bomb_child` with `STRATA_BOMB_CASE` set) so that its peak RSS (VmHWM)
//! is its own. Before the bounds, the many-headers case held ~200 MiB of
//! PAX records, the tiny-records case ~170 MiB of parsed pairs, and the
//! archive case read a 256 MiB long name whole through the `tar` crate.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::process::Command;

use strata_layerdb::{ImportOptions, LoadOptions};

const MIB: usize = 1 << 20;
/// Peak RSS a refused bomb may reach in the child, all included (the test
/// binary itself takes a few MiB).
const HWM_LIMIT_KIB: u64 = 64 * 1024;

/// A `Read` over chunks made one at a time, so the test itself never
/// holds the whole bomb.
struct Chunks<I: Iterator<Item = Vec<u8>>> {
    it: I,
    cur: Vec<u8>,
    pos: usize,
}

impl<I: Iterator<Item = Vec<u8>>> Read for Chunks<I> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.it.next() {
                Some(c) => {
                    self.cur = c;
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn chunks(it: impl Iterator<Item = Vec<u8>>) -> impl Read {
    Chunks {
        it,
        cur: Vec::new(),
        pos: 0,
    }
}

/// A ustar header of type `kind` for `size` bytes.
fn header(name: &str, kind: tar::EntryType, size: u64) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name).unwrap();
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(size);
    h.set_cksum();
    h.as_bytes().to_vec()
}

/// A header and its data, padded to whole blocks.
fn member(name: &str, kind: tar::EntryType, data: &[u8]) -> Vec<u8> {
    let mut v = header(name, kind, data.len() as u64);
    v.extend_from_slice(data);
    v.resize(v.len().div_ceil(512) * 512, 0);
    v
}

/// One PAX record with its self-inclusive length.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while body + len.to_string().len() != len {
        len = body + len.to_string().len();
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

/// The end: a small file and two zero blocks.
fn tail() -> Vec<u8> {
    let mut v = member("f", tar::EntryType::Regular, b"x");
    v.extend_from_slice(&[0u8; 1024]);
    v
}

/// 200 PAX headers of almost 1 MiB each before one file.
fn many_big_headers() -> impl Read {
    let rec = pax_record("SCHILY.xattr.user.big", &vec![b'v'; MIB - 100]);
    let x = member("PaxHeaders/f", tar::EntryType::XHeader, &rec);
    chunks(
        (0..200)
            .map(move |_| x.clone())
            .chain(std::iter::once(tail())),
    )
}

/// 10 PAX headers of 1 MiB each made of ~170,000 tiny records.
fn tiny_records() -> impl Read {
    let one = pax_record("a", b"b");
    let data: Vec<u8> = one.repeat((MIB - 16) / one.len());
    let x = member("PaxHeaders/f", tar::EntryType::XHeader, &data);
    chunks(
        (0..10)
            .map(move |_| x.clone())
            .chain(std::iter::once(tail())),
    )
}

/// A GNU long name of 256 MiB, streamed.
fn huge_long_name() -> impl Read {
    let size = 256 * MIB;
    let head = header("././@LongLink", tar::EntryType::GNULongName, size as u64);
    chunks(
        std::iter::once(head)
            .chain((0..size / MIB).map(|_| vec![b'n'; MIB]))
            .chain(std::iter::once(tail())),
    )
}

/// Peak resident memory of this process, in KiB.
fn vm_hwm_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn bomb_child() {
    let Ok(case) = std::env::var("STRATA_BOMB_CASE") else {
        return; // run as a normal test: nothing to do
    };
    let (_d, store) = common::store();
    let import = |mut r: Box<dyn Read>| {
        store
            .import(&mut r, &ImportOptions::default())
            .map(|id| id.to_string())
    };
    let res = match case.as_str() {
        "layer-many-pax-headers" => import(Box::new(many_big_headers())),
        "layer-tiny-pax-records" => import(Box::new(tiny_records())),
        "layer-huge-gnu-long-name" => import(Box::new(huge_long_name())),
        "archive-huge-gnu-long-name" => {
            // A sparse file: the long name's data is a hole on disk.
            let tmp = tempfile::tempdir().unwrap();
            let p = tmp.path().join("bomb.tar");
            let mut f = File::create(&p).unwrap();
            let size = 256 * MIB as u64;
            f.write_all(&header("././@LongLink", tar::EntryType::GNULongName, size))
                .unwrap();
            f.set_len(512 + size).unwrap();
            let mut f = File::options().append(true).open(&p).unwrap();
            f.write_all(&tail()).unwrap();
            drop(f);
            store
                .load(&p, &LoadOptions::default())
                .map(|v| format!("{v:?}"))
        }
        other => panic!("unknown case {other}"),
    };
    // On a line of its own: the harness has printed "test bomb_child ...".
    match res {
        Ok(v) => println!("\nRESULT ok {v}"),
        Err(e) => println!("\nRESULT err {e}"),
    }
    println!("HWM_KIB {}", vm_hwm_kib());
}

/// Runs one case in a child; returns its result line and peak RSS.
fn run_case(case: &str) -> (String, u64) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "bomb_child", "--nocapture", "--test-threads=1"])
        .env("STRATA_BOMB_CASE", case)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{case}: child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("{case}: no result in {stdout}"))
        .to_string();
    let hwm = stdout
        .lines()
        .find_map(|l| l.strip_prefix("HWM_KIB "))
        .unwrap_or_else(|| panic!("{case}: no VmHWM in {stdout}"))
        .parse()
        .unwrap();
    (result, hwm)
}

#[test]
fn tar_metadata_bombs_fail_with_a_clear_error_and_bounded_memory() {
    let cases = [
        ("layer-many-pax-headers", "exceed 1 MiB in total"),
        ("layer-tiny-pax-records", "PAX records for one entry"),
        ("layer-huge-gnu-long-name", "over the limit of 1 MiB"),
        ("archive-huge-gnu-long-name", "over the limit of 1 MiB"),
    ];
    for (case, needle) in cases {
        let (result, hwm) = run_case(case);
        println!("{case}: peak RSS {hwm} KiB: {result}");
        assert!(
            result.starts_with("err ") && result.contains(needle) && !result.contains('\n'),
            "{case}: expected a one-line error containing {needle:?}, got {result:?}"
        );
        assert!(
            hwm < HWM_LIMIT_KIB,
            "{case}: peak RSS {hwm} KiB, over {HWM_LIMIT_KIB} KiB"
        );
    }
}
