//! Paths relative to a layer root, as NUL-terminated strings ready for `*at`
//! syscalls. The root is `.`; no path has a leading `/`, and no component is
//! `.` or `..` (names come from the kernel, which resolves those itself).

use std::ffi::{CStr, CString, OsStr};
use std::os::unix::ffi::OsStrExt;

/// A path relative to a layer root.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RelPath(CString);

impl RelPath {
    /// The layer root itself.
    pub fn root() -> RelPath {
        RelPath(c".".to_owned())
    }

    /// Whether this is the root.
    pub fn is_root(&self) -> bool {
        self.0.as_bytes() == b"."
    }

    /// From raw bytes (empty means root). Bytes must not contain NUL.
    pub fn from_bytes(b: &[u8]) -> RelPath {
        if b.is_empty() || b == b"." {
            return RelPath::root();
        }
        RelPath(CString::new(b).unwrap_or_else(|_| c".".to_owned()))
    }

    /// `self/name`.
    pub fn join(&self, name: &[u8]) -> RelPath {
        if self.is_root() {
            return RelPath::from_bytes(name);
        }
        let mut v = self.0.as_bytes().to_vec();
        v.push(b'/');
        v.extend_from_slice(name);
        RelPath::from_bytes(&v)
    }

    /// `self/name` for an `OsStr` name.
    pub fn join_os(&self, name: &OsStr) -> RelPath {
        self.join(name.as_bytes())
    }

    /// The parent path and the last name (the root's parent is the root).
    pub fn split(&self) -> (RelPath, &[u8]) {
        let b = self.0.as_bytes();
        match b.iter().rposition(|c| *c == b'/') {
            Some(i) => (RelPath::from_bytes(&b[..i]), &b[i + 1..]),
            None => (RelPath::root(), b),
        }
    }

    /// The NUL-terminated form for syscalls.
    pub fn c(&self) -> &CStr {
        &self.0
    }

    /// The raw bytes.
    pub fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for RelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.0.as_bytes()))
    }
}

impl std::fmt::Display for RelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", String::from_utf8_lossy(self.0.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_and_split() {
        let r = RelPath::root();
        let a = r.join(b"a");
        let ab = a.join(b"b");
        assert_eq!(ab.bytes(), b"a/b");
        let (p, n) = ab.split();
        assert_eq!((p.bytes(), n), (&b"a"[..], &b"b"[..]));
        let (p, n) = a.split();
        assert!(p.is_root());
        assert_eq!(n, b"a");
    }
}
