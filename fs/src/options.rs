//! The fuse-overlayfs `-o` option string, parsed once into [`MountOptions`].
//!
//! Accepted as podman, buildah and dockerd pass it: `lowerdir=` (topmost
//! first, `:`-separated, `\:` escapes a colon, `\,` a comma, `\\` a
//! backslash), `upperdir=`, `workdir=` (`\,` and `\\` escaped alike),
//! `volatile`, `fsync=0`, `squash_to_uid=N`,
//! `squash_to_gid=N`, `squash_to_root`, `uidmapping=` / `gidmapping=`
//! (`CTR:HOST:LEN` triples separated by `:` or `,`, a leading `:` allowed),
//! `noatime`, `nodev`, `nosuid`, `noexec`, `ro`, `context=...`,
//! `xattr_permissions=0|1|2`, and empty elements. Unknown options are kept in [`MountOptions::ignored`] and never
//! fail the mount.

use std::path::PathBuf;

use crate::ids::{IdMap, IdRange};

/// Errors in an option string; each names the offending option.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionsError {
    #[error("option {option}: {reason}")]
    Invalid { option: String, reason: String },
    #[error("no lowerdir= given: a mount needs at least one lower directory")]
    NoLower,
    #[error("upperdir= needs workdir= as well (and the other way round)")]
    UpperWithoutWork,
}

/// Everything a mount is told by its option string.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MountOptions {
    /// Lower layers, topmost first.
    pub lowers: Vec<PathBuf>,
    /// The writable upper layer; `None` makes a read-only mount.
    pub upper: Option<PathBuf>,
    /// Scratch directory on the upper's filesystem, for atomic copy-up.
    pub work: Option<PathBuf>,
    /// Skip every fsync (`volatile` or `fsync=0`).
    pub no_fsync: bool,
    /// Report this uid for every file (`squash_to_uid`, `squash_to_root`).
    pub squash_uid: Option<u32>,
    /// Report this gid for every file (`squash_to_gid`, `squash_to_root`).
    pub squash_gid: Option<u32>,
    /// uid mapping between the ids stored in layers and the ids users see.
    pub uid_map: IdMap,
    /// gid mapping, as `uid_map`.
    pub gid_map: IdMap,
    /// Do not update access times.
    pub noatime: bool,
    /// Do not interpret device nodes.
    pub nodev: bool,
    /// Do not honour set-user-id bits.
    pub nosuid: bool,
    /// Do not allow execution.
    pub noexec: bool,
    /// Mount read-only even with an upper layer.
    pub read_only: bool,
    /// Number of FUSE worker threads (`threads=N`), default: CPUs, at least 2.
    pub threads: Option<usize>,
    /// Use FUSE passthrough for upper files when the kernel allows (`passthrough=0` disables).
    pub passthrough: bool,
    /// Entry/attribute cache timeout in seconds (`timeout=`, default a day).
    pub timeout_secs: Option<f64>,
    /// Answer READDIRPLUS (`readdirplus=0` turns it off).
    pub readdirplus: bool,
    /// Copy up only metadata on chmod, chown, utimes and xattr changes
    /// (`metacopy=on`, as the kernel's overlayfs); data follows on the
    /// first write. Off by default: tools that read the upper directory
    /// directly expect whole files.
    pub metacopy: bool,
    /// `batch_sync=on|off|auto`: whether the copy-ups of a chmod, chown,
    /// utimes or setxattr may be marked and synced once per burst instead
    /// of each before its rename (see `copyup.rs`); `None` (auto): where
    /// the upper filesystem commits metadata in order.
    pub batch_sync: Option<bool>,
    /// Nodes kept at most before the least recently used are handed back
    /// to the kernel (`max_nodes=N`, 0 for no limit).
    pub max_nodes: Option<usize>,
    /// Append a count of FUSE requests by operation to this file when the
    /// mount ends (`stats=FILE`).
    pub stats: Option<PathBuf>,
    /// No extended attributes through the mount (`noxattrs=1`, as
    /// fuse-overlayfs): every xattr call fails with EOPNOTSUPP. Copy-up
    /// still carries the layers' xattrs.
    pub noxattrs: bool,
    /// FUSE over io_uring (`uring=auto|on|off`, default auto): see
    /// [`Uring`].
    pub uring: Uring,
    /// The upper layer's owner override when its root carries none
    /// (`xattr_permissions=1`: `security.fuseoverlayfs.override_stat`,
    /// `=2`: `user.containers.override_stat`; see `ownership.rs`).
    pub xattr_permissions: Option<strata_ovl::OverrideMode>,
    /// Options that were accepted but have no effect here.
    pub ignored: Vec<String>,
}

/// Which transport serves the mount's requests (`uring=`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Uring {
    /// FUSE over io_uring when the kernel offers it at INIT (root has set
    /// `/sys/module/fuse/parameters/enable_uring`) and this process can
    /// create the ring; the classic `/dev/fuse` loop otherwise, with one
    /// log line saying why.
    #[default]
    Auto,
    /// FUSE over io_uring or no mount: the mount fails with the reason.
    On,
    /// The classic `/dev/fuse` loop.
    Off,
}

/// Splits a lowerdir list on unescaped `:`, unescaping `\:` and `\\`.
pub fn split_lowerdirs(s: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ':' => {
                if !cur.is_empty() {
                    out.push(PathBuf::from(std::mem::take(&mut cur)));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(PathBuf::from(cur));
    }
    out
}

/// Splits the whole `-o` string on `,`, keeping commas inside a quoted
/// `context="a,b"` value, and escaped `\,`.
fn split_options(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            '\\' => {
                cur.push(c);
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

fn parse_u32(option: &str, v: &str) -> Result<u32, OptionsError> {
    v.trim().parse().map_err(|_| OptionsError::Invalid {
        option: option.to_string(),
        reason: format!("{v:?} is not a number"),
    })
}

fn parse_map(option: &str, v: &str) -> Result<IdMap, OptionsError> {
    let nums: Vec<&str> = v.split([':', ',']).filter(|s| !s.is_empty()).collect();
    if nums.is_empty() || !nums.len().is_multiple_of(3) {
        return Err(OptionsError::Invalid {
            option: option.to_string(),
            reason: "expected CONTAINER-ID:HOST-ID:LENGTH triples".into(),
        });
    }
    let mut ranges = Vec::new();
    for t in nums.chunks(3) {
        ranges.push(IdRange {
            inside: parse_u32(option, t[0])?,
            outside: parse_u32(option, t[1])?,
            len: parse_u32(option, t[2])?,
        });
    }
    Ok(IdMap::new(ranges))
}

impl MountOptions {
    /// Parses one or more `-o` strings (later ones add to earlier ones).
    pub fn parse<'a>(strings: impl IntoIterator<Item = &'a str>) -> Result<Self, OptionsError> {
        let mut o = MountOptions {
            passthrough: true,
            readdirplus: true,
            ..Default::default()
        };
        for s in strings {
            for opt in split_options(s) {
                o.apply(&opt)?;
            }
        }
        Ok(o)
    }

    fn apply(&mut self, opt: &str) -> Result<(), OptionsError> {
        let opt = opt.trim();
        if opt.is_empty() {
            return Ok(());
        }
        let (key, val) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        match (key, val) {
            ("lowerdir", Some(v)) => self.lowers.extend(split_lowerdirs(v)),
            ("upperdir", Some(v)) => self.upper = Some(PathBuf::from(unescape(v))),
            ("workdir", Some(v)) => self.work = Some(PathBuf::from(unescape(v))),
            ("volatile", None) => self.no_fsync = true,
            ("fsync", Some(v)) => self.no_fsync = v.trim() == "0",
            ("squash_to_root", None) => {
                self.squash_uid = Some(0);
                self.squash_gid = Some(0);
            }
            ("squash_to_uid", Some(v)) => self.squash_uid = Some(parse_u32(opt, v)?),
            ("squash_to_gid", Some(v)) => self.squash_gid = Some(parse_u32(opt, v)?),
            ("uidmapping", Some(v)) => self.uid_map = parse_map(opt, v)?,
            ("gidmapping", Some(v)) => self.gid_map = parse_map(opt, v)?,
            ("noatime", None) => self.noatime = true,
            ("nodev", None) => self.nodev = true,
            ("nosuid", None) => self.nosuid = true,
            ("noexec", None) => self.noexec = true,
            ("ro", None) => self.read_only = true,
            ("rw", None) => self.read_only = false,
            ("threads", Some(v)) => self.threads = Some(parse_u32(opt, v)?.max(1) as usize),
            ("passthrough", Some(v)) => self.passthrough = v.trim() != "0",
            ("readdirplus", Some(v)) => self.readdirplus = v.trim() != "0",
            ("noxattrs", None) => self.noxattrs = true,
            ("uring", Some(v)) => {
                self.uring = match v.trim() {
                    "auto" => Uring::Auto,
                    "on" | "1" => Uring::On,
                    "off" | "0" => Uring::Off,
                    _ => {
                        return Err(OptionsError::Invalid {
                            option: opt.to_string(),
                            reason: "expected uring=auto, uring=on or uring=off".into(),
                        })
                    }
                }
            }
            ("noxattrs", Some(v)) => self.noxattrs = v.trim() != "0",
            ("metacopy", Some(v)) => {
                self.metacopy = match v.trim() {
                    "on" => true,
                    "off" => false,
                    _ => {
                        return Err(OptionsError::Invalid {
                            option: opt.to_string(),
                            reason: "expected metacopy=on or metacopy=off".into(),
                        })
                    }
                }
            }
            ("batch_sync", Some(v)) => {
                self.batch_sync = match v.trim() {
                    "on" => Some(true),
                    "off" => Some(false),
                    "auto" => None,
                    _ => {
                        return Err(OptionsError::Invalid {
                            option: opt.to_string(),
                            reason: "expected batch_sync=auto, batch_sync=on or batch_sync=off"
                                .into(),
                        })
                    }
                }
            }
            ("max_nodes", Some(v)) => {
                self.max_nodes = Some(v.trim().parse().map_err(|_| OptionsError::Invalid {
                    option: opt.to_string(),
                    reason: "expected a number of nodes".into(),
                })?)
            }
            ("stats", Some(v)) if !v.is_empty() => {
                self.stats = Some(std::path::absolute(v).unwrap_or_else(|_| PathBuf::from(v)))
            }
            ("xattr_permissions", Some(v)) => {
                self.xattr_permissions = v
                    .trim()
                    .parse()
                    .ok()
                    .and_then(strata_ovl::OverrideMode::from_option)
                    .ok_or_else(|| OptionsError::Invalid {
                        option: opt.to_string(),
                        reason: "expected xattr_permissions=0, 1 or 2".into(),
                    })?
            }
            ("timeout", Some(v)) => {
                self.timeout_secs = Some(v.trim().parse().map_err(|_| OptionsError::Invalid {
                    option: opt.to_string(),
                    reason: "expected seconds".into(),
                })?)
            }
            _ => self.ignored.push(opt.to_string()),
        }
        Ok(())
    }

    /// Checks that the options describe a mountable stack.
    pub fn validate(&self) -> Result<(), OptionsError> {
        if self.lowers.is_empty() {
            return Err(OptionsError::NoLower);
        }
        if self.upper.is_some() != self.work.is_some() {
            return Err(OptionsError::UpperWithoutWork);
        }
        Ok(())
    }
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn podman_option_string() {
        let o = MountOptions::parse([
            "lowerdir=/l/A:/l/B,upperdir=/u,workdir=/w,,volatile,context=\"system_u:object_r:container_file_t:s0:c1,c2\",uidmapping=:0:100000:65536,gidmapping=:0:100000:65536,noatime,nodev,fsync=0,weird_option",
        ])
        .unwrap();
        assert_eq!(o.lowers, vec![PathBuf::from("/l/A"), PathBuf::from("/l/B")]);
        assert_eq!(o.upper, Some(PathBuf::from("/u")));
        assert!(o.no_fsync && o.noatime && o.nodev);
        assert_eq!(o.uid_map.to_user(0), 100000);
        assert_eq!(o.uid_map.to_disk(100005), 5);
        assert!(o.ignored.iter().any(|s| s == "weird_option"));
        assert!(o.ignored.iter().any(|s| s.starts_with("context=")));
        o.validate().unwrap();
    }

    #[test]
    fn uring_modes() {
        let parse = |s: &str| MountOptions::parse(["lowerdir=/l", s]).map(|o| o.uring);
        assert_eq!(parse(""), Ok(Uring::Auto));
        assert_eq!(parse("uring=on"), Ok(Uring::On));
        assert_eq!(parse("uring=off"), Ok(Uring::Off));
        assert_eq!(parse("uring=auto"), Ok(Uring::Auto));
        assert!(parse("uring=maybe").is_err());
    }

    #[test]
    fn escaped_colon_in_lowerdir() {
        assert_eq!(
            split_lowerdirs(r"/a\:b:/c"),
            vec![PathBuf::from("/a:b"), PathBuf::from("/c")]
        );
    }

    #[test]
    fn escaped_comma_in_layer_paths() {
        let o = MountOptions::parse([
            r"lowerdir=/l/a\,b:/l/c\:d\,e,upperdir=/u\,1,workdir=/w\,1,debug",
        ])
        .unwrap();
        assert_eq!(
            o.lowers,
            vec![PathBuf::from("/l/a,b"), PathBuf::from("/l/c:d,e")]
        );
        assert_eq!(o.upper, Some(PathBuf::from("/u,1")));
        assert_eq!(o.work, Some(PathBuf::from("/w,1")));
        assert_eq!(o.ignored, vec!["debug".to_string()]);
    }

    #[test]
    fn xattr_permissions() {
        use strata_ovl::OverrideMode;
        let o = MountOptions::parse(["lowerdir=/a,xattr_permissions=2"]).unwrap();
        assert_eq!(o.xattr_permissions, Some(OverrideMode::Containers));
        assert!(o.ignored.is_empty());
        let o = MountOptions::parse(["lowerdir=/a,xattr_permissions=1"]).unwrap();
        assert_eq!(o.xattr_permissions, Some(OverrideMode::Privileged));
        let o = MountOptions::parse(["xattr_permissions=1,xattr_permissions=0"]).unwrap();
        assert_eq!(o.xattr_permissions, None);
        assert!(MountOptions::parse(["xattr_permissions=3"]).is_err());
    }

    #[test]
    fn squash_and_errors() {
        let o = MountOptions::parse(["lowerdir=/a,squash_to_root"]).unwrap();
        assert_eq!((o.squash_uid, o.squash_gid), (Some(0), Some(0)));
        assert!(MountOptions::parse(["squash_to_uid=x"]).is_err());
        assert_eq!(
            MountOptions::parse(["upperdir=/u"]).unwrap().validate(),
            Err(OptionsError::NoLower)
        );
        assert_eq!(
            MountOptions::parse(["lowerdir=/a,upperdir=/u"])
                .unwrap()
                .validate(),
            Err(OptionsError::UpperWithoutWork)
        );
    }
}
