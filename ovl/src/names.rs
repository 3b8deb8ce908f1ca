//! The names of the overlay format: the AUFS/OCI whiteout names and the
//! private xattrs, in the namespace a layer is written in.
//!
//! Nothing else in the workspace spells `.wh.` or `trusted.overlay`: the
//! kernel's overlayfs, fuse-overlayfs, containers/storage and OCI layer tars
//! each use some of these forms, and Strata reads every one of them.

use std::ffi::CStr;

/// Prefix of an AUFS/OCI whiteout: `.wh.NAME` hides `NAME` in the layers
/// below.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";

/// The AUFS/OCI opaque marker: inside a directory, it hides everything the
/// layers below hold under that directory.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// Prefix of AUFS's own bookkeeping (`.wh..wh.plnk`, `.wh..wh.aufs`), which
/// readers ignore, as docker does.
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";

/// The xattr namespaces the overlay format is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum XattrNs {
    /// `trusted.overlay.*`: the kernel's overlayfs, for callers with
    /// `CAP_SYS_ADMIN` in the initial user namespace.
    Trusted,
    /// `user.overlay.*`: the kernel's overlayfs mounted with `userxattr`
    /// (rootless and user namespaces).
    User,
}

/// An overlay xattr, by meaning; [`Xattr::name`] gives its name in a
/// namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Xattr {
    /// `overlay.opaque`: `y` marks a directory opaque. The kernel also
    /// writes `x` on a directory that holds xattr whiteouts (not opaque).
    Opaque,
    /// `overlay.whiteout`: an empty regular file carrying it is a whiteout.
    Whiteout,
    /// `overlay.whiteouts`: files in this directory may be xattr whiteouts.
    Whiteouts,
    /// `overlay.metacopy`: the file's data is still in a lower layer.
    Metacopy,
    /// `overlay.redirect`: a directory renamed by the kernel's overlayfs
    /// (`redirect_dir=on`), pointing at its lower origin.
    Redirect,
    /// `overlay.strata.origin`: Strata's record of a copied-up entry's
    /// original inode number, so `st_ino` survives copy-up.
    Origin,
    /// `overlay.strata.impure`: an upper directory that merges nothing but
    /// holds copied-up entries (the kernel's impure directories).
    Impure,
}

impl Xattr {
    /// The xattr's name in `ns`.
    pub fn name(self, ns: XattrNs) -> &'static CStr {
        use XattrNs::{Trusted as T, User as U};
        match (self, ns) {
            (Xattr::Opaque, T) => c"trusted.overlay.opaque",
            (Xattr::Opaque, U) => c"user.overlay.opaque",
            (Xattr::Whiteout, T) => c"trusted.overlay.whiteout",
            (Xattr::Whiteout, U) => c"user.overlay.whiteout",
            (Xattr::Whiteouts, T) => c"trusted.overlay.whiteouts",
            (Xattr::Whiteouts, U) => c"user.overlay.whiteouts",
            (Xattr::Metacopy, T) => c"trusted.overlay.metacopy",
            (Xattr::Metacopy, U) => c"user.overlay.metacopy",
            (Xattr::Redirect, T) => c"trusted.overlay.redirect",
            (Xattr::Redirect, U) => c"user.overlay.redirect",
            (Xattr::Origin, T) => c"trusted.overlay.strata.origin",
            (Xattr::Origin, U) => c"user.overlay.strata.origin",
            (Xattr::Impure, T) => c"trusted.overlay.strata.impure",
            (Xattr::Impure, U) => c"user.overlay.strata.impure",
        }
    }

    /// Which overlay xattr `name` is, in either namespace.
    pub fn parse(name: &[u8]) -> Option<Xattr> {
        const ALL: [Xattr; 7] = [
            Xattr::Opaque,
            Xattr::Whiteout,
            Xattr::Whiteouts,
            Xattr::Metacopy,
            Xattr::Redirect,
            Xattr::Origin,
            Xattr::Impure,
        ];
        ALL.into_iter().find(|x| {
            [XattrNs::Trusted, XattrNs::User]
                .into_iter()
                .any(|ns| x.name(ns).to_bytes() == name)
        })
    }
}

/// fuse-overlayfs' opaque xattr (its unprivileged form), read as opaque
/// too.
pub const FUSE_OVERLAYFS_OPAQUE: &CStr = c"user.fuseoverlayfs.opaque";

/// Every xattr whose value `y` marks a directory opaque, in the order they
/// are checked.
pub const OPAQUE_XATTRS: [&CStr; 3] = [
    c"trusted.overlay.opaque",
    c"user.overlay.opaque",
    FUSE_OVERLAYFS_OPAQUE,
];

/// fuse-overlayfs' `xattr_permissions=1` ("privileged") override of a
/// file's owner and mode (see [`crate::ownership`]).
pub const OVERRIDE_STAT_PRIVILEGED: &CStr = c"security.fuseoverlayfs.override_stat";

/// containers/storage's `force_mask` override of a file's owner and mode,
/// also fuse-overlayfs' `xattr_permissions=2` (see [`crate::ownership`]).
pub const OVERRIDE_STAT_CONTAINERS: &CStr = c"user.containers.override_stat";

/// Older fuse-overlayfs' unprivileged override of a file's owner and mode
/// (see [`crate::ownership`]).
pub const OVERRIDE_STAT_USER: &CStr = c"user.fuseoverlayfs.override_stat";

/// The prefixes of the xattrs that belong to an overlay implementation
/// (the kernel's, fuse-overlayfs', Strata's): never shown to users, never
/// settable through a mount, never carried into a layer tar, never taken
/// from one.
const PRIVATE_PREFIXES: [&[u8]; 3] = [
    b"trusted.overlay.",
    b"user.overlay.",
    b"user.fuseoverlayfs.",
];

/// Private names outside [`PRIVATE_PREFIXES`]: the owner and mode
/// overrides, which a mount presents as the file's attributes instead.
const PRIVATE_NAMES: [&CStr; 2] = [OVERRIDE_STAT_PRIVILEGED, OVERRIDE_STAT_CONTAINERS];

/// Whether an xattr name is private to the overlay format (see
/// [`PRIVATE_PREFIXES`] and [`PRIVATE_NAMES`]). An escaped overlay xattr
/// ([`is_escaped_xattr`]) is not: it is data, a nested overlay's own.
pub fn is_private_xattr(name: &[u8]) -> bool {
    (PRIVATE_PREFIXES.iter().any(|p| name.starts_with(p))
        || PRIVATE_NAMES.iter().any(|n| n.to_bytes() == name))
        && !is_escaped_xattr(name)
}

/// The prefixes of the overlay's own xattrs, which a mount escapes for its
/// clients (the kernel's overlayfs escapes the one of its namespace).
const OVERLAY_PREFIXES: [&[u8]; 2] = [b"trusted.overlay.", b"user.overlay."];

/// What escaping inserts after an overlay prefix.
const ESCAPE: &[u8] = b"overlay.";

/// Whether `name` is an escaped overlay xattr, `trusted.overlay.overlay.*`
/// or `user.overlay.overlay.*`: stored in a layer for a nested overlay (an
/// overlay mounted on this one), shown to clients with one `overlay.` less
/// ([`unescape_xattr`]), never read as the overlay's own (Linux 6.7+,
/// overlayfs.rst "Nesting overlayfs mounts").
pub fn is_escaped_xattr(name: &[u8]) -> bool {
    OVERLAY_PREFIXES
        .iter()
        .any(|p| name.strip_prefix(*p).is_some_and(|r| r.starts_with(ESCAPE)))
}

/// The name under which a client's xattr `name` is stored in a layer: an
/// overlay xattr (`trusted.overlay.X`, `user.overlay.X`, escaped or not)
/// with one more `overlay.` (`trusted.overlay.overlay.X`), so the client
/// (a nested overlay) keeps its whiteouts and opaque directories and this
/// mount never takes them for its own; `None` for every other name, stored
/// as it is.
pub fn escape_xattr(name: &[u8]) -> Option<Vec<u8>> {
    let p = OVERLAY_PREFIXES.iter().find(|p| name.starts_with(p))?;
    Some([*p, ESCAPE, &name[p.len()..]].concat())
}

/// The name clients see for an escaped xattr `name` of a layer (one
/// `overlay.` less), `None` if it is not escaped.
pub fn unescape_xattr(name: &[u8]) -> Option<Vec<u8>> {
    let p = OVERLAY_PREFIXES.iter().find(|p| name.starts_with(p))?;
    let rest = name[p.len()..].strip_prefix(ESCAPE)?;
    Some([*p, rest].concat())
}

/// What a directory entry's name means in the AUFS/OCI forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryName<'a> {
    /// An ordinary name.
    Plain,
    /// `.wh.NAME`: hides `NAME` in the layers below.
    Whiteout(&'a [u8]),
    /// `.wh..wh..opq`: the directory it is in is opaque.
    OpaqueMarker,
    /// `.wh..wh.*` other than the opaque marker: AUFS bookkeeping, ignored.
    AufsMeta,
}

impl<'a> EntryName<'a> {
    /// Classifies a name (one path component).
    pub fn of(name: &'a [u8]) -> EntryName<'a> {
        if name == OPAQUE_MARKER {
            EntryName::OpaqueMarker
        } else if name.starts_with(AUFS_META_PREFIX) {
            EntryName::AufsMeta
        } else if let Some(target) = name.strip_prefix(WHITEOUT_PREFIX) {
            EntryName::Whiteout(target)
        } else {
            EntryName::Plain
        }
    }
}

/// Whether a name is reserved by the whiteout forms: never shown to users,
/// never created through a mount.
pub fn is_reserved_name(name: &[u8]) -> bool {
    name.starts_with(WHITEOUT_PREFIX)
}

/// `.wh.NAME`, the AUFS/OCI whiteout of `name`.
pub fn whiteout_name(name: &[u8]) -> Vec<u8> {
    [WHITEOUT_PREFIX, name].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_classified() {
        assert_eq!(EntryName::of(b"a"), EntryName::Plain);
        assert_eq!(EntryName::of(b".wh.a"), EntryName::Whiteout(b"a"));
        assert_eq!(EntryName::of(b".wh..wh..opq"), EntryName::OpaqueMarker);
        assert_eq!(EntryName::of(b".wh..wh.plnk"), EntryName::AufsMeta);
        assert_eq!(EntryName::of(b".whx"), EntryName::Plain);
        assert_eq!(whiteout_name(b"x"), b".wh.x");
    }

    #[test]
    fn private_names_cover_every_implementation() {
        for n in [
            "trusted.overlay.opaque",
            "user.overlay.origin",
            "user.fuseoverlayfs.opaque",
            "trusted.overlay.strata.origin",
            "security.fuseoverlayfs.override_stat",
            "user.containers.override_stat",
            "user.fuseoverlayfs.override_stat",
        ] {
            assert!(is_private_xattr(n.as_bytes()), "{n}");
        }
        for n in [
            "user.mime_type",
            "security.capability",
            "trusted.other",
            "user.overlayx",
            "user.containers.override_statx",
            "security.selinux",
        ] {
            assert!(!is_private_xattr(n.as_bytes()), "{n}");
        }
    }

    #[test]
    fn overlay_xattrs_are_escaped_one_level_at_a_time() {
        let esc = |n: &str| escape_xattr(n.as_bytes()).map(|v| String::from_utf8(v).unwrap());
        let unesc = |n: &str| unescape_xattr(n.as_bytes()).map(|v| String::from_utf8(v).unwrap());
        assert_eq!(
            esc("trusted.overlay.opaque").as_deref(),
            Some("trusted.overlay.overlay.opaque")
        );
        assert_eq!(
            esc("user.overlay.whiteout").as_deref(),
            Some("user.overlay.overlay.whiteout")
        );
        assert_eq!(
            esc("trusted.overlay.overlay.opaque").as_deref(),
            Some("trusted.overlay.overlay.overlay.opaque"),
            "nesting to any depth"
        );
        for n in [
            "user.mime_type",
            "user.fuseoverlayfs.opaque",
            "trusted.overlayx",
            "security.capability",
        ] {
            assert_eq!(esc(n), None, "{n}");
            assert_eq!(unesc(n), None, "{n}");
        }
        assert_eq!(unesc("trusted.overlay.opaque"), None);
        assert_eq!(
            unesc("trusted.overlay.overlay.opaque").as_deref(),
            Some("trusted.overlay.opaque")
        );
        for n in [
            "trusted.overlay.overlay.opaque",
            "user.overlay.overlay.x",
            "user.overlay.overlay.overlay.y",
        ] {
            assert!(is_escaped_xattr(n.as_bytes()), "{n}");
            assert!(
                !is_private_xattr(n.as_bytes()),
                "{n} is a nested overlay's data"
            );
            assert_eq!(esc(&unesc(n).unwrap()).as_deref(), Some(n), "round trip");
        }
        assert!(!is_escaped_xattr(b"trusted.overlay.opaque"));
        assert!(!is_escaped_xattr(b"trusted.overlay.overlayx"));
        assert!(is_private_xattr(b"trusted.overlay.overlayx"));
    }

    #[test]
    fn xattr_names_round_trip() {
        for ns in [XattrNs::Trusted, XattrNs::User] {
            for x in [Xattr::Opaque, Xattr::Metacopy, Xattr::Origin, Xattr::Impure] {
                assert_eq!(Xattr::parse(x.name(ns).to_bytes()), Some(x));
            }
        }
        assert_eq!(Xattr::parse(b"user.fuseoverlayfs.opaque"), None);
    }
}
