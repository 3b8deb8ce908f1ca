//! The tar-split record: how a layer's original tar stream is rebuilt, byte
//! for byte, from its extracted directory.
//!
//! A layer is stored extracted (the filesystem stacks directories), but its
//! identity is the SHA-256 of the tar it came in, and `save` must write a
//! tar with that very diffID. Regenerating a tar from the directory would
//! give a different stream (header layout, PAX records, padding, order), so
//! while a layer is imported every byte of the stream that is *not* file
//! content (headers, PAX and GNU long-name records, padding, the end marker
//! and any trailing zeros) is recorded verbatim, and file content is recorded
//! as a reference (path in the layer, length). Re-assembly interleaves the
//! two. This is what containers/storage does with tar-split; the record is
//! small (about 512 bytes per entry, zstd-compressed).
//!
//! Trade-off: `check` re-hashes re-assembled streams, so it detects changed
//! or missing file content; a change to metadata alone (mode, owner) of an
//! extracted file is not caught by the hash, because headers come from the
//! record.
//!
//! Format (inside a zstd stream): magic `STSPLIT1`, then records
//! `b'R' u32le len bytes` (raw) and `b'F' u64le size u32le pathlen path`
//! (file content), closed by `b'E'`.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

const MAGIC: &[u8; 8] = b"STSPLIT1";
const RAW_CHUNK: usize = 64 * 1024;

/// Writes a tar-split record.
pub(crate) struct SplitWriter<W: Write> {
    out: W,
    raw: Vec<u8>,
}

impl<W: Write> SplitWriter<W> {
    pub fn new(mut out: W) -> io::Result<Self> {
        out.write_all(MAGIC)?;
        Ok(SplitWriter {
            out,
            raw: Vec::with_capacity(RAW_CHUNK),
        })
    }

    /// Records bytes that are not file content.
    pub fn raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.raw.extend_from_slice(bytes);
        if self.raw.len() >= RAW_CHUNK {
            self.flush_raw()?;
        }
        Ok(())
    }

    fn flush_raw(&mut self) -> io::Result<()> {
        if !self.raw.is_empty() {
            self.out.write_all(b"R")?;
            self.out.write_all(&(self.raw.len() as u32).to_le_bytes())?;
            self.out.write_all(&self.raw)?;
            self.raw.clear();
        }
        Ok(())
    }

    /// Records `size` bytes of content of the file at `path` (relative to
    /// the layer root).
    pub fn file(&mut self, path: &[u8], size: u64) -> io::Result<()> {
        self.flush_raw()?;
        self.out.write_all(b"F")?;
        self.out.write_all(&size.to_le_bytes())?;
        self.out.write_all(&(path.len() as u32).to_le_bytes())?;
        self.out.write_all(path)
    }

    /// Closes the record and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.flush_raw()?;
        self.out.write_all(b"E")?;
        self.out.flush()?;
        Ok(self.out)
    }
}

enum State {
    Record,
    Raw(u64),
    File { file: std::fs::File, left: u64 },
    Done,
}

/// Rebuilds the original tar stream from a record and the layer's root
/// directory. Reading yields the exact bytes of the imported tar; a missing
/// or short file is an `io::Error` naming the path.
pub(crate) struct Reassembler<R: Read> {
    rec: R,
    root: OwnedFd,
    state: State,
}

impl<R: Read> Reassembler<R> {
    pub fn new(mut rec: R, root: OwnedFd) -> io::Result<Self> {
        let mut magic = [0u8; 8];
        rec.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a tar-split record",
            ));
        }
        Ok(Reassembler {
            rec,
            root,
            state: State::Record,
        })
    }

    fn next_record(&mut self) -> io::Result<()> {
        let mut tag = [0u8; 1];
        self.rec.read_exact(&mut tag)?;
        match tag[0] {
            b'R' => {
                let mut l = [0u8; 4];
                self.rec.read_exact(&mut l)?;
                self.state = State::Raw(u32::from_le_bytes(l) as u64);
            }
            b'F' => {
                let mut s = [0u8; 8];
                self.rec.read_exact(&mut s)?;
                let size = u64::from_le_bytes(s);
                let mut l = [0u8; 4];
                self.rec.read_exact(&mut l)?;
                let mut path = vec![0u8; u32::from_le_bytes(l) as usize];
                self.rec.read_exact(&mut path)?;
                let how = OpenHow::new()
                    .flags(OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
                    .mode(Mode::empty())
                    .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
                let p = std::ffi::OsStr::from_bytes(&path);
                let named = |e: io::Error| {
                    io::Error::new(
                        e.kind(),
                        format!("layer file {}: {e}", String::from_utf8_lossy(&path)),
                    )
                };
                let fd = nix::fcntl::openat2(self.root.as_fd(), p, how)
                    .map_err(|e| named(io::Error::from(e)))?;
                let file = std::fs::File::from(fd);
                let len = file.metadata().map_err(named)?.len();
                if len != size {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "layer file {} has {len} bytes, the layer tar had {size}",
                            String::from_utf8_lossy(&path)
                        ),
                    ));
                }
                self.state = State::File { file, left: size };
            }
            b'E' => self.state = State::Done,
            t => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("tar-split record has an unknown tag {t:#x}"),
                ))
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for Reassembler<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match &mut self.state {
                State::Done => return Ok(0),
                State::Record => self.next_record()?,
                State::Raw(0) | State::File { left: 0, .. } => self.state = State::Record,
                State::Raw(left) => {
                    let n = (*left).min(buf.len() as u64) as usize;
                    self.rec.read_exact(&mut buf[..n])?;
                    *left -= n as u64;
                    return Ok(n);
                }
                State::File { file, left } => {
                    let n = (*left).min(buf.len() as u64) as usize;
                    let got = file.read(&mut buf[..n])?;
                    if got == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "layer file shrank while being read",
                        ));
                    }
                    *left -= got as u64;
                    return Ok(got);
                }
            }
        }
    }
}
