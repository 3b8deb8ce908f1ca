//! A `Read` adapter that bounds a tar stream's extension headers for
//! readers we do not write ourselves (the `tar` crate reads PAX and GNU
//! long-name data whole, whatever its size).
//!
//! [`BoundedTarReader`] follows the stream's headers as the bytes pass
//! through, with the limits of [`crate::tarfmt::ExtBudget`] (1 MiB of
//! extension data, 32 extension headers, 16384 PAX records per entry); a
//! stream that breaks one ends in an `InvalidData` error before the header
//! that broke it reaches the reader. It holds at most one PAX header's data
//! (to learn a `size` record), so its own memory is bounded too. Bytes it
//! cannot follow (a bad checksum) pass unchecked: the reader refuses them.

use std::io::{self, Read};

use crate::tarfmt::{padding, ExtBudget, RawHeader, BLOCK};

#[derive(Debug)]
enum State {
    /// Collecting a header block.
    Header { got: usize },
    /// Skipping GNU sparse extension blocks.
    SparseExt { got: usize, then: u64 },
    /// Passing an entry's data and padding; a PAX header's data is kept.
    Data { left: u64, keep: Option<Vec<u8>> },
    /// After the end-of-archive marker, or bytes we cannot follow.
    Unchecked,
}

/// Wraps a tar stream; see the module header.
pub struct BoundedTarReader<R> {
    inner: R,
    state: State,
    block: [u8; BLOCK],
    budget: ExtBudget,
    /// A PAX `size` record for the next entry.
    next_size: Option<u64>,
}

impl<R: Read> BoundedTarReader<R> {
    /// Wraps `inner`, positioned at the first header.
    pub fn new(inner: R) -> Self {
        BoundedTarReader {
            inner,
            state: State::Header { got: 0 },
            block: [0; BLOCK],
            budget: ExtBudget::default(),
            next_size: None,
        }
    }

    /// Follows `bytes`, just read from the stream.
    fn follow(&mut self, mut bytes: &[u8]) -> Result<(), String> {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Unchecked => return Ok(()),
                State::Header { got } | State::SparseExt { got, .. } => {
                    let n = (BLOCK - *got).min(bytes.len());
                    self.block[*got..*got + n].copy_from_slice(&bytes[..n]);
                    *got += n;
                    bytes = &bytes[n..];
                    if *got == BLOCK {
                        self.state = self.after_block()?;
                    }
                }
                State::Data { left, keep } => {
                    let n = (*left).min(bytes.len() as u64) as usize;
                    if let Some(k) = keep {
                        k.extend_from_slice(&bytes[..n]);
                    }
                    *left -= n as u64;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        if let Some(k) = keep.take() {
                            self.pax_done(k)?;
                        }
                        self.state = State::Header { got: 0 };
                    }
                }
            }
        }
        Ok(())
    }

    /// The state after a whole block was collected.
    fn after_block(&mut self) -> Result<State, String> {
        if let State::SparseExt { then, .. } = self.state {
            return Ok(if self.block[504] != 0 {
                State::SparseExt { got: 0, then }
            } else {
                data(then)
            });
        }
        let h = RawHeader(&self.block);
        if h.is_zero() || !h.checksum_ok() {
            return Ok(State::Unchecked);
        }
        let Some(size) = h.size() else {
            return Ok(State::Unchecked);
        };
        let t = h.typeflag();
        if matches!(t, b'x' | b'g' | b'L' | b'K') {
            self.budget.header(t, size)?;
            let total = size + padding(size) as u64;
            if t == b'x' {
                if total == 0 {
                    return Ok(State::Header { got: 0 });
                }
                return Ok(State::Data {
                    left: total,
                    keep: Some(Vec::with_capacity(total as usize)),
                });
            }
            return Ok(data(total));
        }
        self.budget.reset();
        let size = self.next_size.take().unwrap_or(size);
        let total = size + padding(size) as u64;
        if t == b'S' && self.block[482] != 0 {
            return Ok(State::SparseExt {
                got: 0,
                then: total,
            });
        }
        Ok(data(total))
    }

    /// Reads a `size` record from a whole PAX header's data (with its
    /// padding).
    fn pax_done(&mut self, data: Vec<u8>) -> Result<(), String> {
        let h = RawHeader(&self.block);
        let size = h.size().unwrap_or(0) as usize;
        for (k, v) in self.budget.pax(&data[..size.min(data.len())])? {
            if k == b"size" {
                self.next_size = std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok());
            }
        }
        Ok(())
    }
}

fn data(total: u64) -> State {
    if total == 0 {
        State::Header { got: 0 }
    } else {
        State::Data {
            left: total,
            keep: None,
        }
    }
}

impl<R: Read> Read for BoundedTarReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Err(why) = self.follow(&buf[..n]) {
            self.state = State::Unchecked;
            return Err(io::Error::new(io::ErrorKind::InvalidData, why));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, kind: tar::EntryType, data: &[u8]) -> Vec<u8> {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        let mut v = h.as_bytes().to_vec();
        v.extend_from_slice(data);
        v.resize(v.len().div_ceil(512) * 512, 0);
        v
    }

    fn entries(tar: &[u8]) -> io::Result<Vec<(String, Vec<u8>)>> {
        let mut a = tar::Archive::new(BoundedTarReader::new(tar));
        let mut out = Vec::new();
        for e in a.entries()? {
            let mut e = e?;
            let p = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            let mut d = Vec::new();
            e.read_to_end(&mut d)?;
            out.push((p, d));
        }
        Ok(out)
    }

    #[test]
    fn ordinary_archives_read_the_same_through_it() {
        let mut b = tar::Builder::new(Vec::new());
        let long = format!("{}/f", "d".repeat(150));
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        b.append_data(&mut h, &long, &b"abc"[..]).unwrap();
        b.append_pax_extensions([("SCHILY.xattr.user.k", &b"v"[..])])
            .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(600);
        h.set_mode(0o644);
        b.append_data(&mut h, "big", &[7u8; 600][..]).unwrap();
        let tar = b.into_inner().unwrap();
        let got = entries(&tar).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], (long, b"abc".to_vec()));
        assert_eq!(got[1], ("big".to_string(), vec![7u8; 600]));
    }

    #[test]
    fn a_pax_size_record_is_followed() {
        // The header says 0 bytes, the PAX record 1000: the next header
        // is 1024 bytes further on, and a long name there is still seen.
        let mut tar = member("PaxHeaders/f", tar::EntryType::XHeader, b"13 size=1000\n");
        tar.extend(member("f", tar::EntryType::Regular, b""));
        tar.extend(vec![1u8; 1024]);
        let mut bomb = tar::Header::new_ustar();
        bomb.set_path("././@LongLink").unwrap();
        bomb.set_entry_type(tar::EntryType::GNULongName);
        bomb.set_size(2 << 20);
        bomb.set_cksum();
        tar.extend_from_slice(bomb.as_bytes());
        let mut r = BoundedTarReader::new(&tar[..]);
        let err = io::copy(&mut r, &mut io::sink()).unwrap_err();
        assert!(err.to_string().contains("GNU long name"), "{err}");
    }

    #[test]
    fn bombs_are_refused() {
        let rec = b"1048000 a=".to_vec();
        let mut big = rec.clone();
        big.resize(1_048_000 - 1, b'v');
        big.push(b'\n');
        let x = member("PaxHeaders/f", tar::EntryType::XHeader, &big);
        let mut tar = Vec::new();
        for _ in 0..3 {
            tar.extend_from_slice(&x);
        }
        tar.extend(member("f", tar::EntryType::Regular, b"x"));
        let err = entries(&tar).unwrap_err();
        assert!(err.to_string().contains("exceed 1 MiB"), "{err}");
    }
}
