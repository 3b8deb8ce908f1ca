//! `strata cp`: copies between the host and a container's tree, every
//! container path resolved beneath the container's root
//! ([`crate::beneath`]), as docker does: a symlink in the container leads
//! where it leads for the container's processes (copying onto `/tmp/x ->
//! /etc/shadow` writes the container's `/etc/shadow`), never to a host
//! path. Symlinks inside a copied tree are copied as symlinks.

use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::beneath::Root;

fn io_err(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn ctx(e: io::Error, what: &str, p: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", p.display()))
}

fn entries(dir: OwnedFd) -> io::Result<Vec<std::ffi::OsString>> {
    use std::os::unix::ffi::OsStrExt;
    let d = nix::dir::Dir::from_fd(dir).map_err(io_err)?;
    let mut names = Vec::new();
    for e in d {
        let e = e.map_err(io_err)?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(std::ffi::OsStr::from_bytes(n).to_os_string());
        }
    }
    Ok(names)
}

/// Copies `rel` of the container's tree to the host path `dst`.
pub fn copy_out(root: &Root, rel: &Path, dst: &Path) -> io::Result<()> {
    let at = root
        .open_at(rel, OFlag::O_PATH | OFlag::O_NOFOLLOW, 0)
        .map_err(|e| ctx(e, "in the container:", rel))?;
    let meta = fs::File::from(at.try_clone()?).metadata()?;
    let ft = meta.file_type();
    if ft.is_dir() {
        fs::create_dir_all(dst).map_err(|e| ctx(e, "mkdir", dst))?;
        let dir = root.open_at(
            rel,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
            0,
        )?;
        for name in entries(dir)? {
            copy_out(root, &rel.join(&name), &dst.join(&name))?;
        }
        fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    } else if ft.is_symlink() {
        let target = nix::fcntl::readlinkat(at.as_fd(), "").map_err(io_err)?;
        let _ = fs::remove_file(dst);
        std::os::unix::fs::symlink(target, dst).map_err(|e| ctx(e, "symlink", dst))?;
    } else if ft.is_file() {
        let src = root.open_at(rel, OFlag::O_RDONLY | OFlag::O_NOFOLLOW, 0)?;
        let mut out = fs::File::create(dst).map_err(|e| ctx(e, "create", dst))?;
        io::copy(&mut fs::File::from(src), &mut out)?;
        out.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    Ok(())
}

/// Copies the host path `src` to `rel` in the container's tree.
pub fn copy_in(src: &Path, root: &Root, rel: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(src).map_err(|e| ctx(e, "stat", src))?;
    let ft = meta.file_type();
    let mode = meta.mode() & 0o7777;
    if ft.is_dir() {
        let dir = root
            .mkdir_all(rel, 0o755)
            .map_err(|e| ctx(e, "in the container: mkdir", rel))?;
        for e in fs::read_dir(src)? {
            let e = e?;
            copy_in(&e.path(), root, &rel.join(e.file_name()))?;
        }
        // O_PATH descriptors take no fchmod: reopen the directory.
        let d = root.open_at(rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0)?;
        let _ = dir;
        nix::sys::stat::fchmod(d.as_fd(), Mode::from_bits_truncate(mode)).map_err(io_err)?;
    } else if ft.is_symlink() {
        let target = fs::read_link(src)?;
        let Some((parent, name)) = root.parent_of(rel)? else {
            return Err(io::Error::other("cannot replace the container's root"));
        };
        let _ = nix::unistd::unlinkat(
            parent.as_fd(),
            &name,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
        nix::unistd::symlinkat(&target, parent.as_fd(), &name).map_err(io_err)?;
    } else if ft.is_file() {
        let out = root
            .open_at(rel, OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC, mode)
            .map_err(|e| ctx(e, "in the container: create", rel))?;
        let mut out = fs::File::from(out);
        io::copy(
            &mut fs::File::open(src).map_err(|e| ctx(e, "open", src))?,
            &mut out,
        )?;
        out.set_permissions(fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Where `cp SRC CTR:rel` lands: inside `rel` when it is a directory (of
/// the container, symlinks resolved in it), else at `rel`.
pub fn target_in(root: &Root, rel: &Path, src_name: &std::ffi::OsStr) -> PathBuf {
    match root.open_at(rel, OFlag::O_PATH | OFlag::O_DIRECTORY, 0) {
        Ok(_) => rel.join(src_name),
        Err(_) => rel.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Planted {
        _t: tempfile::TempDir,
        root: PathBuf,
        host: PathBuf,
    }

    /// A container tree whose symlinks lead to a host directory if
    /// followed on the host.
    fn planted() -> Planted {
        let t = tempfile::tempdir().unwrap();
        let host = t.path().join("host");
        fs::create_dir_all(&host).unwrap();
        fs::write(host.join("victim"), "host").unwrap();
        let root = t.path().join("root");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/shadow"), "ctr").unwrap();
        // The same absolute path exists in the container.
        fs::create_dir_all(root.join(host.strip_prefix("/").unwrap())).unwrap();
        fs::write(
            root.join(host.strip_prefix("/").unwrap()).join("victim"),
            "ctr-victim",
        )
        .unwrap();
        symlink(host.join("victim"), root.join("file-link")).unwrap();
        symlink(&host, root.join("dir-link")).unwrap();
        symlink("/etc/shadow", root.join("shadow-link")).unwrap();
        Planted { _t: t, root, host }
    }

    #[test]
    fn copying_in_resolves_symlinks_inside_the_container() {
        let p = planted();
        let src = p.root.parent().unwrap().join("src");
        fs::write(&src, "new").unwrap();
        let r = Root::open(&p.root).unwrap();
        copy_in(&src, &r, Path::new("/file-link")).unwrap();
        copy_in(&src, &r, Path::new("/dir-link/victim")).unwrap();
        copy_in(&src, &r, Path::new("/shadow-link")).unwrap();
        assert_eq!(fs::read_to_string(p.host.join("victim")).unwrap(), "host");
        assert_eq!(
            fs::read_to_string(p.root.join("etc/shadow")).unwrap(),
            "new"
        );
        let inside = p
            .root
            .join(p.host.strip_prefix("/").unwrap())
            .join("victim");
        assert_eq!(fs::read_to_string(inside).unwrap(), "new");
    }

    #[test]
    fn copying_out_never_reads_a_host_path() {
        let p = planted();
        let r = Root::open(&p.root).unwrap();
        let out = p.root.parent().unwrap().join("out");
        fs::create_dir_all(&out).unwrap();
        copy_out(&r, Path::new("/dir-link/victim"), &out.join("a")).unwrap();
        assert_eq!(fs::read_to_string(out.join("a")).unwrap(), "ctr-victim");
        // The link itself is copied, not what it names.
        copy_out(&r, Path::new("/file-link"), &out.join("b")).unwrap();
        assert!(fs::symlink_metadata(out.join("b"))
            .unwrap()
            .file_type()
            .is_symlink());
        copy_out(&r, Path::new("/"), &out.join("all")).unwrap();
        assert!(fs::symlink_metadata(out.join("all/dir-link"))
            .unwrap()
            .file_type()
            .is_symlink());
    }
}
