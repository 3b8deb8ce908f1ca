//! Owner and mode kept in an xattr instead of the inode: fuse-overlayfs'
//! `xattr_permissions=1|2` and containers/storage's `force_mask`.
//!
//! A user without enough ids (rootless, one id mapped) cannot chown a file
//! to the owner a layer says, so the owner and mode are written into an
//! xattr, `UID:GID:MODE[:TYPE]` (MODE in octal, the 0o7777 bits; TYPE one
//! of `dir`, `file`, `symlink`, `pipe`, `socket`, `block-MAJ-MIN`,
//! `char-MAJ-MIN`), and a mount presents that instead of the real stat.
//! Which xattr a layer uses is its [`OverrideMode`], read from the xattrs
//! its root directory carries. The ids are the ids stored on disk, before
//! any `uidmapping`/`gidmapping` of a mount.
//!
//! The names are private ([`crate::is_private_xattr`]): a mount never
//! lists them, and layer tars never carry them.

use std::fmt;
use std::os::fd::BorrowedFd;
use std::str::FromStr;

use nix::errno::Errno;

use crate::names::{OVERRIDE_STAT_CONTAINERS, OVERRIDE_STAT_PRIVILEGED, OVERRIDE_STAT_USER};
use crate::sys;

/// Which override xattr a layer keeps owners and modes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OverrideMode {
    /// `security.fuseoverlayfs.override_stat` (fuse-overlayfs'
    /// `xattr_permissions=1`): settable on every type of file, by a caller
    /// with `CAP_SYS_ADMIN` over the filesystem.
    Privileged,
    /// `user.containers.override_stat` (containers/storage's `force_mask`,
    /// fuse-overlayfs' `xattr_permissions=2`): regular files and
    /// directories only, as every `user.*` xattr. Values are also read
    /// from `user.fuseoverlayfs.override_stat`, where fuse-overlayfs 1.10
    /// writes them in this mode.
    Containers,
    /// `user.fuseoverlayfs.override_stat` on the root (older
    /// fuse-overlayfs): values are read from `user.containers.override_stat`
    /// first, as newer fuse-overlayfs does, and written there.
    User,
}

impl OverrideMode {
    /// The mode of fuse-overlayfs' `xattr_permissions=N`: 1 privileged, 2
    /// containers, 0 none; `None` for any other value.
    pub fn from_option(n: u32) -> Option<Option<OverrideMode>> {
        match n {
            0 => Some(None),
            1 => Some(Some(OverrideMode::Privileged)),
            2 => Some(Some(OverrideMode::Containers)),
            _ => None,
        }
    }

    /// The mode of the layer whose root is `root`: the first of the
    /// override xattrs its root carries (security, then
    /// user.containers, then user.fuseoverlayfs, as fuse-overlayfs
    /// checks them); `None` when it carries none.
    pub fn detect(root: BorrowedFd<'_>) -> Option<OverrideMode> {
        [
            (OVERRIDE_STAT_PRIVILEGED, OverrideMode::Privileged),
            (OVERRIDE_STAT_CONTAINERS, OverrideMode::Containers),
            (OVERRIDE_STAT_USER, OverrideMode::User),
        ]
        .into_iter()
        .find(|(name, _)| sys::getxattr_at(root, c".", name, &mut []).is_ok())
        .map(|(_, m)| m)
    }

    /// The xattr names values are read from, in order.
    fn read_names(self) -> &'static [&'static std::ffi::CStr] {
        match self {
            OverrideMode::Privileged => &[OVERRIDE_STAT_PRIVILEGED],
            OverrideMode::Containers | OverrideMode::User => {
                &[OVERRIDE_STAT_CONTAINERS, OVERRIDE_STAT_USER]
            }
        }
    }

    /// The xattr name values are written to.
    pub fn name(self) -> &'static std::ffi::CStr {
        match self {
            OverrideMode::Privileged => OVERRIDE_STAT_PRIVILEGED,
            OverrideMode::Containers | OverrideMode::User => OVERRIDE_STAT_CONTAINERS,
        }
    }

    /// Whether an entry of type `mode & S_IFMT` can carry the override
    /// (`user.*` xattrs exist only on regular files and directories).
    pub fn can_carry(self, mode: u32) -> bool {
        let fmt = mode & libc::S_IFMT;
        self == OverrideMode::Privileged || fmt == libc::S_IFREG || fmt == libc::S_IFDIR
    }

    /// The override of the entry `path` beneath `dir`: `Ok(None)` when it
    /// has none, `Err(EINVAL)` when its value is malformed.
    pub fn read(
        self,
        dir: BorrowedFd<'_>,
        path: &std::ffi::CStr,
    ) -> Result<Option<OverrideStat>, Errno> {
        let mut buf = [0u8; 128];
        for name in self.read_names() {
            match sys::getxattr_at(dir, path, name, &mut buf) {
                Ok(n) => {
                    let s = std::str::from_utf8(&buf[..n]).map_err(|_| Errno::EINVAL)?;
                    return s.parse::<OverrideStat>().map(Some).map_err(Errno::from);
                }
                Err(Errno::ENODATA) | Err(Errno::EOPNOTSUPP) => {}
                Err(Errno::ERANGE) => return Err(Errno::EINVAL),
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Writes `value` as the override of the entry `path` beneath `dir`.
    pub fn write(
        self,
        dir: BorrowedFd<'_>,
        path: &std::ffi::CStr,
        value: &OverrideStat,
    ) -> Result<(), Errno> {
        sys::setxattr_at(dir, path, self.name(), value.to_string().as_bytes(), 0)
    }
}

/// The type an override records (containers/storage stores devices it
/// cannot make as regular files with their type here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverrideKind {
    Dir,
    File,
    Symlink,
    Pipe,
    Socket,
    Block { major: u32, minor: u32 },
    Char { major: u32, minor: u32 },
}

/// An override's value: `UID:GID:MODE[:TYPE]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverrideStat {
    /// The owner, as stored on disk (before a mount's id mapping).
    pub uid: u32,
    /// The group, as `uid`.
    pub gid: u32,
    /// The permission bits (0o7777).
    pub mode: u32,
    /// The type it records, if any; kept when owner or mode change.
    pub kind: Option<OverrideKind>,
}

/// A malformed override value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadOverride;

impl fmt::Display for BadOverride {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("malformed owner override: expected UID:GID:MODE[:TYPE], MODE in octal")
    }
}

impl std::error::Error for BadOverride {}

impl From<BadOverride> for Errno {
    fn from(_: BadOverride) -> Errno {
        Errno::EINVAL
    }
}

fn device(rest: &str) -> Result<(u32, u32), BadOverride> {
    // `block-8-0` (containers/storage); `-` or `:` between the numbers,
    // and anything after the minor is ignored.
    let mut it = rest.split(['-', ':']);
    let major = it.next().and_then(|s| s.parse().ok()).ok_or(BadOverride)?;
    let minor = it.next().and_then(|s| s.parse().ok()).ok_or(BadOverride)?;
    Ok((major, minor))
}

impl FromStr for OverrideKind {
    type Err = BadOverride;

    fn from_str(s: &str) -> Result<Self, BadOverride> {
        Ok(match s {
            "dir" => OverrideKind::Dir,
            "file" => OverrideKind::File,
            "symlink" => OverrideKind::Symlink,
            "pipe" => OverrideKind::Pipe,
            "socket" => OverrideKind::Socket,
            _ => {
                if let Some(rest) = s.strip_prefix("block-") {
                    let (major, minor) = device(rest)?;
                    OverrideKind::Block { major, minor }
                } else if let Some(rest) = s.strip_prefix("char-") {
                    let (major, minor) = device(rest)?;
                    OverrideKind::Char { major, minor }
                } else {
                    return Err(BadOverride);
                }
            }
        })
    }
}

impl fmt::Display for OverrideKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OverrideKind::Dir => f.write_str("dir"),
            OverrideKind::File => f.write_str("file"),
            OverrideKind::Symlink => f.write_str("symlink"),
            OverrideKind::Pipe => f.write_str("pipe"),
            OverrideKind::Socket => f.write_str("socket"),
            OverrideKind::Block { major, minor } => write!(f, "block-{major}-{minor}"),
            OverrideKind::Char { major, minor } => write!(f, "char-{major}-{minor}"),
        }
    }
}

impl FromStr for OverrideStat {
    type Err = BadOverride;

    fn from_str(s: &str) -> Result<Self, BadOverride> {
        let s = s.trim_end_matches('\0').trim();
        let mut parts = s.splitn(4, ':');
        let uid = parts
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or(BadOverride)?;
        let gid = parts
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or(BadOverride)?;
        let mode = parts
            .next()
            .and_then(|p| u32::from_str_radix(p, 8).ok())
            .ok_or(BadOverride)?;
        let kind = match parts.next() {
            None | Some("") => None,
            Some(t) => Some(t.parse()?),
        };
        Ok(OverrideStat {
            uid,
            gid,
            mode: mode & 0o7777,
            kind,
        })
    }
}

impl fmt::Display for OverrideStat {
    /// `UID:GID:MODE` (MODE in octal, as fuse-overlayfs writes it), then
    /// `:TYPE` when one is recorded.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{:o}", self.uid, self.gid, self.mode)?;
        if let Some(k) = self.kind {
            write!(f, ":{k}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_as_fuse_overlayfs_and_containers_storage_write_them() {
        let v: OverrideStat = "1000:1000:755".parse().unwrap();
        assert_eq!((v.uid, v.gid, v.mode, v.kind), (1000, 1000, 0o755, None));
        let v: OverrideStat = "1000:1011:0644:file".parse().unwrap();
        assert_eq!(v.kind, Some(OverrideKind::File));
        let v: OverrideStat = "0:0:4755:dir".parse().unwrap();
        assert_eq!(v.mode, 0o4755);
        let v: OverrideStat = "1006:1017:0600:char-1-3".parse().unwrap();
        assert_eq!(v.kind, Some(OverrideKind::Char { major: 1, minor: 3 }));
        let v: OverrideStat = "1:2:0600:block-8-1-future".parse().unwrap();
        assert_eq!(v.kind, Some(OverrideKind::Block { major: 8, minor: 1 }));
        let v: OverrideStat = "1:2:0600:block-8:1".parse().unwrap();
        assert_eq!(v.kind, Some(OverrideKind::Block { major: 8, minor: 1 }));
        for bad in [
            "",
            "1000:1001",
            "x:1:644",
            "1:2:9",
            "1:2:644:disk-1-2",
            "1:2:644:char-x-1",
        ] {
            assert!(bad.parse::<OverrideStat>().is_err(), "{bad}");
        }
    }

    #[test]
    fn values_round_trip() {
        for s in [
            "1000:1000:755",
            "0:0:4755:dir",
            "5:6:600:char-1-3",
            "1:1:777:symlink",
        ] {
            assert_eq!(s.parse::<OverrideStat>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn modes_detected_from_the_root_in_fuse_overlayfs_order() {
        let d = tempfile::tempdir().unwrap();
        let root = sys::open_dir_path(d.path()).unwrap();
        let fd = std::os::fd::AsFd::as_fd(&root);
        assert_eq!(OverrideMode::detect(fd), None);
        sys::setxattr_at(fd, c".", OVERRIDE_STAT_USER, b"0:0:755", 0).unwrap();
        assert_eq!(OverrideMode::detect(fd), Some(OverrideMode::User));
        sys::setxattr_at(fd, c".", OVERRIDE_STAT_CONTAINERS, b"0:0:755", 0).unwrap();
        assert_eq!(OverrideMode::detect(fd), Some(OverrideMode::Containers));
        assert_eq!(
            OverrideMode::from_option(2),
            Some(Some(OverrideMode::Containers))
        );
        assert_eq!(OverrideMode::from_option(3), None);
    }
}
