//! Owner translation between what layers store and what users see:
//! fuse-overlayfs's `uidmapping`/`gidmapping` and `squash_to_*`.
//!
//! A range maps ids stored on disk (`inside`, the container's view as written
//! in the layers) to the ids the mount reports (`outside`): a file stored with
//! uid `inside + k` is shown as `outside + k`; a file created by a caller with
//! uid `outside + k` is stored as `inside + k`. Ids outside every range pass
//! through unchanged. An empty map is the identity.

/// One contiguous range of a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// First id as stored in the layers.
    pub inside: u32,
    /// First id as shown through the mount.
    pub outside: u32,
    /// Number of ids in the range.
    pub len: u32,
}

/// A uid or gid mapping (possibly empty: the identity).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdMap {
    ranges: Vec<IdRange>,
}

impl IdMap {
    /// A mapping made of `ranges`.
    pub fn new(ranges: Vec<IdRange>) -> Self {
        IdMap { ranges }
    }

    /// Whether this is the identity.
    pub fn is_identity(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The id users see for an id stored on disk.
    pub fn to_user(&self, disk: u32) -> u32 {
        for r in &self.ranges {
            if disk >= r.inside && (disk - r.inside) < r.len {
                return r.outside + (disk - r.inside);
            }
        }
        disk
    }

    /// The id to store on disk for an id a caller has.
    pub fn to_disk(&self, user: u32) -> u32 {
        for r in &self.ranges {
            if user >= r.outside && (user - r.outside) < r.len {
                return r.inside + (user - r.outside);
            }
        }
        user
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_both_ways() {
        let m = IdMap::new(vec![
            IdRange {
                inside: 0,
                outside: 1000,
                len: 1,
            },
            IdRange {
                inside: 1,
                outside: 110000,
                len: 65536,
            },
        ]);
        assert_eq!(m.to_user(0), 1000);
        assert_eq!(m.to_user(1), 110000);
        assert_eq!(m.to_disk(110001), 2);
        assert_eq!(m.to_disk(1000), 0);
        assert_eq!(m.to_user(70000), 70000);
        assert!(IdMap::default().is_identity());
    }
}
