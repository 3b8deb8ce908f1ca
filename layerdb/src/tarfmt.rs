//! The tar format, byte by byte: header parsing for the layer reader and a
//! small deterministic writer (ustar headers, PAX records for long names,
//! big numbers and xattrs).
//!
//! We read and write tar ourselves rather than through the `tar` crate
//! because layer identity is the SHA-256 of the exact byte stream: the
//! reader must see every byte (headers, PAX records, padding, trailing
//! zeros) to hash it and record it for re-assembly, and the writer must be
//! deterministic so the same tree always gives the same diffID.

use std::io::{self, Read, Write};

/// Size of a tar block.
pub(crate) const BLOCK: usize = 512;

/// Extended attributes or PAX records: (name, value) pairs, in order.
pub(crate) type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// The kind of a tar entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EntryKind {
    /// A regular file with `size` bytes of content following the header.
    File,
    /// A directory.
    Dir,
    /// A symbolic link to the target.
    Symlink(Vec<u8>),
    /// A hard link to another entry of the same archive.
    HardLink(Vec<u8>),
    /// A character device.
    Char(u32, u32),
    /// A block device.
    Block(u32, u32),
    /// A named pipe.
    Fifo,
}

/// Metadata of one tar entry, as read or to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EntryMeta {
    /// The path inside the archive, as bytes (no normalisation applied).
    pub path: Vec<u8>,
    /// What the entry is.
    pub kind: EntryKind,
    /// Permission bits, including setuid/setgid/sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Content size (regular files only; zero otherwise when writing).
    pub size: u64,
    /// Extended attributes, in the order they are to be written.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Parses an octal or base-256 numeric field.
pub(crate) fn parse_num(field: &[u8]) -> Option<u64> {
    if let Some(&first) = field.first() {
        if first & 0x80 != 0 {
            // GNU base-256: big-endian, first byte's high bit is the marker.
            if first & 0x40 != 0 {
                return None; // negative
            }
            let mut v: u64 = (first & 0x3f) as u64;
            for &b in &field[1..] {
                v = v.checked_mul(256)?.checked_add(b as u64)?;
            }
            return Some(v);
        }
    }
    let s: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|b| *b == b' ' || *b == 0)
        .take_while(|b| *b != b' ' && *b != 0)
        .collect();
    if s.is_empty() {
        return Some(0);
    }
    let s = std::str::from_utf8(&s).ok()?;
    u64::from_str_radix(s, 8).ok()
}

fn cstr(field: &[u8]) -> &[u8] {
    match field.iter().position(|b| *b == 0) {
        Some(n) => &field[..n],
        None => field,
    }
}

/// A raw 512-byte header block.
pub(crate) struct RawHeader<'a>(pub &'a [u8; BLOCK]);

impl RawHeader<'_> {
    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|b| *b == 0)
    }

    pub fn checksum_ok(&self) -> bool {
        let Some(stored) = parse_num(&self.0[148..156]) else {
            return false;
        };
        let unsigned: u64 = self
            .0
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    *b as u64
                }
            })
            .sum();
        let signed: i64 = self
            .0
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    *b as i8 as i64
                }
            })
            .sum();
        stored == unsigned || stored as i64 == signed
    }

    pub fn typeflag(&self) -> u8 {
        self.0[156]
    }

    fn is_ustar(&self) -> bool {
        &self.0[257..263] == b"ustar\0"
    }

    /// The name, joined with the ustar prefix when there is one.
    pub fn name(&self) -> Vec<u8> {
        let name = cstr(&self.0[0..100]);
        if self.is_ustar() {
            let prefix = cstr(&self.0[345..500]);
            if !prefix.is_empty() {
                let mut p = prefix.to_vec();
                p.push(b'/');
                p.extend_from_slice(name);
                return p;
            }
        }
        name.to_vec()
    }

    pub fn linkname(&self) -> Vec<u8> {
        cstr(&self.0[157..257]).to_vec()
    }

    pub fn mode(&self) -> Option<u64> {
        parse_num(&self.0[100..108])
    }
    pub fn uid(&self) -> Option<u64> {
        parse_num(&self.0[108..116])
    }
    pub fn gid(&self) -> Option<u64> {
        parse_num(&self.0[116..124])
    }
    pub fn size(&self) -> Option<u64> {
        parse_num(&self.0[124..136])
    }
    pub fn mtime(&self) -> Option<u64> {
        parse_num(&self.0[136..148])
    }
    pub fn devmajor(&self) -> Option<u64> {
        parse_num(&self.0[329..337])
    }
    pub fn devminor(&self) -> Option<u64> {
        parse_num(&self.0[337..345])
    }
}

/// Padding needed after `size` bytes of content.
pub(crate) fn padding(size: u64) -> usize {
    ((BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64) as usize
}

/// Most bytes one extension header (PAX `x` or `g`, GNU `L` or `K`) may
/// carry, as Go's archive/tar (docker, containerd) allows.
pub(crate) const EXT_RECORD_LIMIT: u64 = 1 << 20;
/// Most bytes of PAX `x`, GNU `L` and `K` data kept for one entry, all
/// headers before it together.
pub(crate) const EXT_ENTRY_LIMIT: u64 = 1 << 20;
/// Most extension headers (`x`, `g`, `L`, `K`) before one entry; writers
/// put at most one of each.
pub(crate) const EXT_HEADERS_LIMIT: u32 = 32;
/// Most PAX records for one entry (each xattr is one).
pub(crate) const PAX_RECORDS_LIMIT: usize = 16 * 1024;

/// What the extension headers before one entry have used so far: every
/// reader of untrusted tar charges each `x`, `g`, `L` and `K` header here
/// before reading its data, and resets at each real entry, so that a PAX
/// or long-name bomb ends in an error with at most [`EXT_ENTRY_LIMIT`]
/// bytes held.
#[derive(Debug, Default)]
pub(crate) struct ExtBudget {
    bytes: u64,
    headers: u32,
    records: usize,
}

impl ExtBudget {
    /// Charges one extension header of type `typeflag` carrying `size`
    /// bytes; the error says which limit it broke.
    pub fn header(&mut self, typeflag: u8, size: u64) -> Result<(), String> {
        self.headers += 1;
        if self.headers > EXT_HEADERS_LIMIT {
            return Err(format!(
                "more than {EXT_HEADERS_LIMIT} extension headers (PAX or GNU long name) before one entry; refusing a tar metadata bomb"
            ));
        }
        if size > EXT_RECORD_LIMIT {
            return Err(format!(
                "{} header of {size} bytes, over the limit of {} MiB",
                ext_name(typeflag),
                EXT_RECORD_LIMIT >> 20
            ));
        }
        if typeflag != b'g' {
            self.bytes += size;
            if self.bytes > EXT_ENTRY_LIMIT {
                return Err(format!(
                    "extension headers (PAX or GNU long name) of one entry exceed {} MiB in total; refusing a tar metadata bomb",
                    EXT_ENTRY_LIMIT >> 20
                ));
            }
        }
        Ok(())
    }

    /// Parses the data of a PAX `x` header, counting its records.
    pub fn pax(&mut self, data: &[u8]) -> Result<Pairs, String> {
        let left = PAX_RECORDS_LIMIT - self.records;
        let pairs = parse_pax(data, left).map_err(|e| {
            if e.is_empty() {
                format!(
                    "more than {PAX_RECORDS_LIMIT} PAX records for one entry; refusing a tar metadata bomb"
                )
            } else {
                e
            }
        })?;
        self.records += pairs.len();
        Ok(pairs)
    }

    /// Starts over for the next entry.
    pub fn reset(&mut self) {
        *self = ExtBudget::default();
    }
}

fn ext_name(typeflag: u8) -> &'static str {
    match typeflag {
        b'x' => "PAX",
        b'g' => "PAX global",
        b'L' => "GNU long name",
        b'K' => "GNU long link",
        _ => "extension",
    }
}

/// Parses PAX extended header records (`"<len> <key>=<value>\n"`), at most
/// `max` of them: one more is an error with an empty message.
pub(crate) fn parse_pax(data: &[u8], max: usize) -> Result<Pairs, String> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        if rest.iter().all(|b| *b == 0) {
            break;
        }
        if out.len() == max {
            return Err(String::new());
        }
        let sp = rest
            .iter()
            .position(|b| *b == b' ')
            .ok_or("PAX record without length")?;
        let len: usize = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("PAX record with a bad length")?;
        if len <= sp + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err("PAX record with a bad length".into());
        }
        let rec = &rest[sp + 1..len - 1];
        let eq = rec
            .iter()
            .position(|b| *b == b'=')
            .ok_or("PAX record without '='")?;
        out.push((rec[..eq].to_vec(), rec[eq + 1..].to_vec()));
        rest = &rest[len..];
    }
    Ok(out)
}

/// One PAX record, with its self-inclusive length prefix.
fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    loop {
        let total = body + len.to_string().len();
        if total == len {
            break;
        }
        len = total;
    }
    let mut r = format!("{len} ").into_bytes();
    r.extend_from_slice(key);
    r.push(b'=');
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

fn put_octal(field: &mut [u8], v: u64) -> bool {
    let width = field.len() - 1;
    let s = format!("{v:0width$o}");
    if s.len() > width {
        return false;
    }
    field[..width].copy_from_slice(s.as_bytes());
    field[width] = 0;
    true
}

fn put_str(field: &mut [u8], s: &[u8]) -> bool {
    if s.len() > field.len() {
        return false;
    }
    field[..s.len()].copy_from_slice(s);
    true
}

fn finish_checksum(h: &mut [u8; BLOCK]) {
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|b| *b as u64).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
}

/// Builds a bare ustar header (no PAX handling; fields that do not fit are
/// left out and the caller must have put them in a PAX record).
fn ustar_header(
    name: &[u8],
    typeflag: u8,
    meta: &EntryMeta,
    size: u64,
    link: &[u8],
) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    put_str(&mut h[0..100], name);
    put_octal(&mut h[100..108], meta.mode as u64 & 0o7777);
    put_octal(&mut h[108..116], meta.uid);
    put_octal(&mut h[116..124], meta.gid);
    put_octal(&mut h[124..136], size);
    put_octal(&mut h[136..148], meta.mtime.max(0) as u64);
    h[156] = typeflag;
    put_str(&mut h[157..257], link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    if let EntryKind::Char(ma, mi) | EntryKind::Block(ma, mi) = meta.kind {
        put_octal(&mut h[329..337], ma as u64);
        put_octal(&mut h[337..345], mi as u64);
    } else {
        put_octal(&mut h[329..337], 0);
        put_octal(&mut h[337..345], 0);
    }
    finish_checksum(&mut h);
    h
}

/// A deterministic tar writer. Every entry is a ustar header, preceded by a
/// PAX header when the name or link is longer than the ustar fields, a
/// number does not fit, or the entry has xattrs (`SCHILY.xattr.*`, as GNU
/// tar, Go's archive/tar and docker write them).
pub(crate) struct TarWriter<W: Write> {
    out: W,
    written: u64,
}

impl<W: Write> TarWriter<W> {
    pub fn new(out: W) -> Self {
        TarWriter { out, written: 0 }
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    /// Writes one entry. For regular files `data` must yield exactly
    /// `meta.size` bytes.
    pub fn append(&mut self, meta: &EntryMeta, data: Option<&mut dyn Read>) -> io::Result<()> {
        let (typeflag, link): (u8, &[u8]) = match &meta.kind {
            EntryKind::File => (b'0', b""),
            EntryKind::Dir => (b'5', b""),
            EntryKind::Symlink(t) => (b'2', t),
            EntryKind::HardLink(t) => (b'1', t),
            EntryKind::Char(..) => (b'3', b""),
            EntryKind::Block(..) => (b'4', b""),
            EntryKind::Fifo => (b'6', b""),
        };
        let size = if meta.kind == EntryKind::File {
            meta.size
        } else {
            0
        };
        let mut pax: Vec<u8> = Vec::new();
        let name_fits = meta.path.len() <= 100;
        if !name_fits {
            pax.extend(pax_record(b"path", &meta.path));
        }
        if link.len() > 100 {
            pax.extend(pax_record(b"linkpath", link));
        }
        if size > 0o77777777777 {
            pax.extend(pax_record(b"size", size.to_string().as_bytes()));
        }
        if meta.uid > 0o7777777 {
            pax.extend(pax_record(b"uid", meta.uid.to_string().as_bytes()));
        }
        if meta.gid > 0o7777777 {
            pax.extend(pax_record(b"gid", meta.gid.to_string().as_bytes()));
        }
        for (k, v) in &meta.xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(k);
            pax.extend(pax_record(&key, v));
        }
        if !pax.is_empty() {
            let mut pname = b"PaxHeaders/".to_vec();
            let base = meta
                .path
                .rsplit(|b| *b == b'/')
                .find(|s| !s.is_empty())
                .unwrap_or(b"");
            pname.extend_from_slice(&base[..base.len().min(80)]);
            let pmeta = EntryMeta {
                path: pname.clone(),
                kind: EntryKind::File,
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime: meta.mtime,
                size: pax.len() as u64,
                xattrs: Vec::new(),
            };
            let h = ustar_header(&pname, b'x', &pmeta, pax.len() as u64, b"");
            self.put(&h)?;
            self.put(&pax)?;
            self.put(&vec![0u8; padding(pax.len() as u64)])?;
        }
        let short_name: &[u8] = if name_fits {
            &meta.path
        } else {
            &meta.path[..100]
        };
        let short_link: &[u8] = if link.len() <= 100 {
            link
        } else {
            &link[..100]
        };
        let mut m = meta.clone();
        m.uid = m.uid.min(0o7777777);
        m.gid = m.gid.min(0o7777777);
        let h = ustar_header(
            short_name,
            typeflag,
            &m,
            size.min(0o77777777777),
            short_link,
        );
        self.put(&h)?;
        if size > 0 {
            let data = data.ok_or_else(|| io::Error::other("file entry without data"))?;
            let n = io::copy(&mut data.take(size), &mut CountingWriter(self))?;
            if n != size {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "{} changed size while being archived",
                        String::from_utf8_lossy(&meta.path)
                    ),
                ));
            }
            self.put(&vec![0u8; padding(size)])?;
        }
        Ok(())
    }

    /// Writes the end-of-archive marker (two zero blocks) and returns the
    /// writer and the total number of bytes written.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.put(&[0u8; 2 * BLOCK])?;
        self.out.flush()?;
        Ok((self.out, self.written))
    }
}

struct CountingWriter<'a, W: Write>(&'a mut TarWriter<W>);

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.0.out.write(buf)?;
        self.0.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.out.flush()
    }
}

/// Writes a simple regular-file entry (used for archive members such as
/// `manifest.json`): mode 0444, owner 0:0, mtime 0, as podman writes them.
pub(crate) fn append_simple_file<W: Write>(
    w: &mut TarWriter<W>,
    name: &str,
    size: u64,
    data: &mut dyn Read,
) -> io::Result<()> {
    let meta = EntryMeta {
        path: name.as_bytes().to_vec(),
        kind: EntryKind::File,
        mode: 0o444,
        uid: 0,
        gid: 0,
        mtime: 0,
        size,
        xattrs: Vec::new(),
    };
    w.append(&meta, Some(data))
}

/// Writes a directory entry for archive members (mode 0755, 0:0, mtime 0).
pub(crate) fn append_simple_dir<W: Write>(w: &mut TarWriter<W>, name: &str) -> io::Result<()> {
    let meta = EntryMeta {
        path: name.as_bytes().to_vec(),
        kind: EntryKind::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: 0,
        size: 0,
        xattrs: Vec::new(),
    };
    w.append(&meta, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_lengths_are_self_consistent() {
        for n in [0usize, 1, 5, 80, 95, 96, 97, 990, 995, 1000] {
            let v = vec![b'a'; n];
            let r = pax_record(b"path", &v);
            let parsed = parse_pax(&r, 1).unwrap();
            assert_eq!(parsed, vec![(b"path".to_vec(), v)]);
        }
    }

    #[test]
    fn numbers_parse_in_both_encodings() {
        assert_eq!(parse_num(b"0000644\0"), Some(0o644));
        assert_eq!(parse_num(b"     12 "), Some(0o12));
        assert_eq!(parse_num(&[0x80, 0, 0, 0, 0, 0, 0, 1, 0]), Some(256));
        assert_eq!(parse_num(b"\0\0\0"), Some(0));
    }

    #[test]
    fn written_headers_read_back() {
        let meta = EntryMeta {
            path: [b"d/".repeat(70), b"f".to_vec()].concat(),
            kind: EntryKind::File,
            mode: 0o4755,
            uid: 1000,
            gid: 3_000_000,
            mtime: 1_700_000_000,
            size: 3,
            xattrs: vec![(b"user.k".to_vec(), b"v\0x".to_vec())],
        };
        let mut w = TarWriter::new(Vec::new());
        w.append(&meta, Some(&mut &b"abc"[..])).unwrap();
        let (buf, n) = w.finish().unwrap();
        assert_eq!(n as usize, buf.len());
        assert_eq!(buf.len() % BLOCK, 0);
        // The tar crate agrees.
        let mut ar = tar::Archive::new(&buf[..]);
        let mut e = ar.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(&*e.path_bytes(), &meta.path[..]);
        assert_eq!(e.header().mode().unwrap(), 0o4755);
        assert_eq!(e.header().uid().unwrap(), 1000);
        let exts: Vec<_> = e
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|x| x.unwrap().key().unwrap().to_string())
            .collect();
        assert!(exts.contains(&"SCHILY.xattr.user.k".to_string()));
        let mut s = String::new();
        e.read_to_string(&mut s).unwrap();
        assert_eq!(s, "abc");
    }
}
