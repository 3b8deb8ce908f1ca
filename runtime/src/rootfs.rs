//! A container's init layer, made beside the image's layers at create
//! time (as docker's `-init` layer): it holds the mountpoints the runtime
//! needs — `/proc`, `/sys`, `/dev`, `/etc/hostname`, `/etc/hosts`,
//! `/etc/resolv.conf`, volume targets — so that they exist in the merged
//! view without writing anything into the container's upper layer: `diff`
//! and `commit` see only what the container itself changed. The mounts
//! themselves are made by libcontainer from the OCI spec (`crate::oci`).
//!
//! The image's layers are only read, each resolved beneath its own root
//! ([`crate::beneath`]): a symlink in the image never leads to a host path.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;

use crate::beneath::Root;
use crate::container::{ContainerConfig, Paths};

/// `rel` joined onto `root`, with no `..` and no leading `/`.
pub fn in_root(root: &Path, rel: &str) -> PathBuf {
    let mut p = root.to_path_buf();
    for c in rel.split('/') {
        match c {
            "" | "." | ".." => {}
            c => p.push(c),
        }
    }
    p
}

/// The entry `rel` in one layer, its last component not followed and its
/// other components resolved beneath the layer's root.
fn layer_meta(layer: &Path, rel: &str) -> Option<fs::Metadata> {
    let root = Root::open(layer).ok()?;
    let fd = root
        .open_at(Path::new(rel), OFlag::O_PATH | OFlag::O_NOFOLLOW, 0)
        .ok()?;
    fs::File::from(fd).metadata().ok()
}

/// The mode and owner of `rel` in the topmost of `lowers` that has it.
fn lower_meta(lowers: &[PathBuf], rel: &str) -> Option<fs::Metadata> {
    lowers.iter().find_map(|l| layer_meta(l, rel))
}

/// Makes the directories of `rel` in the init layer with the image's modes
/// and owners; false (and nothing more made) where the image has a
/// non-directory on the way.
fn mkdir_like(init: &Path, lowers: &[PathBuf], rel: &str) -> std::io::Result<bool> {
    let mut acc = String::new();
    for c in rel
        .split('/')
        .filter(|c| !c.is_empty() && *c != "." && *c != "..")
    {
        acc.push('/');
        acc.push_str(c);
        let p = in_root(init, &acc);
        if p.exists() {
            continue;
        }
        let meta = lower_meta(lowers, &acc);
        if meta.as_ref().is_some_and(|m| !m.is_dir()) {
            // The image has a file or a symlink here: the mount resolves
            // it inside the container's root; the init layer must not
            // hide it behind a directory.
            return Ok(false);
        }
        let mode = meta.as_ref().map(|m| m.mode() & 0o7777).unwrap_or(0o755);
        fs::DirBuilder::new().mode(mode).create(&p)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
        if let Some(m) = meta {
            let _ = std::os::unix::fs::lchown(&p, Some(m.uid()), Some(m.gid()));
        }
    }
    Ok(true)
}

fn touch(p: &Path) -> std::io::Result<()> {
    if !p.exists() {
        fs::File::create(p)?;
        fs::set_permissions(p, fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

/// The `/etc/hosts` a container sees.
pub fn hosts_file(hostname: &str) -> String {
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
    )
}

/// Fills the init layer and the files bind-mounted into `/etc`.
pub fn prepare_init_layer(
    paths: &Paths,
    config: &ContainerConfig,
    lowers: &[PathBuf],
) -> std::io::Result<()> {
    let init = paths.init();
    for d in ["/proc", "/sys", "/dev"] {
        mkdir_like(&init, lowers, d)?;
    }
    if mkdir_like(&init, lowers, "/etc")? {
        for f in ["etc/hostname", "etc/hosts", "etc/resolv.conf"] {
            if lower_meta(lowers, f).is_none_or(|m| m.is_file()) {
                touch(&init.join(f))?;
            }
        }
    }
    for v in &config.volumes {
        let parent = Path::new(&v.target)
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        if mkdir_like(&init, lowers, &parent)? && lower_meta(lowers, &v.target).is_none() {
            if v.host.is_dir() {
                mkdir_like(&init, lowers, &v.target)?;
            } else {
                touch(&in_root(&init, &v.target))?;
            }
        }
    }
    fs::write(paths.hostname(), format!("{}\n", config.hostname))?;
    fs::write(paths.hosts(), hosts_file(&config.hostname))?;
    fs::write(paths.resolv(), crate::network::resolv_conf(config.network))?;
    for f in [paths.hostname(), paths.hosts(), paths.resolv()] {
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_layer_holds_mountpoints_with_lower_modes() {
        let t = tempfile::tempdir().unwrap();
        let lower = t.path().join("lower");
        fs::create_dir_all(lower.join("etc")).unwrap();
        fs::set_permissions(lower.join("etc"), fs::Permissions::from_mode(0o711)).unwrap();
        let paths = Paths {
            dir: t.path().join("c"),
        };
        fs::create_dir_all(paths.init()).unwrap();
        let cfg = config_with_a_volume();
        prepare_init_layer(&paths, &cfg, &[lower]).unwrap();
        let init = paths.init();
        assert_eq!(
            fs::metadata(init.join("etc")).unwrap().mode() & 0o777,
            0o711
        );
        assert!(init.join("etc/hosts").is_file());
        assert!(init.join("mnt/v").is_dir());
        assert_eq!(fs::read_to_string(paths.hostname()).unwrap(), "h\n");
    }

    /// A container config with the hostname `h` and a volume at /mnt/v.
    fn config_with_a_volume() -> ContainerConfig {
        serde_json::from_value(serde_json::json!({
            "id": "a".repeat(64), "name": "n", "image": "i",
            "image_id": format!("sha256:{}", "b".repeat(64)),
            "created": "1970-01-01T00:00:00Z", "args": ["sh"], "env": [],
            "workdir": "/", "user": "", "hostname": "h",
            "volumes": [{"host": "/tmp", "target": "/mnt/v", "read_only": false}]
        }))
        .unwrap()
    }

    #[test]
    fn init_layer_does_not_follow_the_images_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let host = t.path().join("host");
        fs::create_dir_all(host.join("etc")).unwrap();
        fs::set_permissions(host.join("etc"), fs::Permissions::from_mode(0o700)).unwrap();
        let lower = t.path().join("lower");
        fs::create_dir_all(&lower).unwrap();
        // The image's /etc and /mnt lead to host paths if followed.
        std::os::unix::fs::symlink(host.join("etc"), lower.join("etc")).unwrap();
        std::os::unix::fs::symlink(&host, lower.join("mnt")).unwrap();
        let paths = Paths {
            dir: t.path().join("c"),
        };
        fs::create_dir_all(paths.init()).unwrap();
        let cfg = config_with_a_volume();
        prepare_init_layer(&paths, &cfg, &[lower]).unwrap();
        let init = paths.init();
        assert!(!init.join("etc").exists());
        assert!(!init.join("mnt").exists());
        assert!(!host.join("v").exists());
        assert!(init.join("proc").is_dir());
    }
}
