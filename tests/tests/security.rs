//! Nothing a container does through the mount may make the server write
//! outside its layers (issue 3: "nothing in a layer (symlinks, `..`) can
//! make the server touch a host path outside the layers"). The classic
//! attack: keep an fd to a lower file, replace a parent directory of its
//! path with a symlink to a host directory, then make the server copy the
//! file up. A server that joins path strings onto the upper directory
//! follows the symlink and writes into the host directory.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::symlink;
use std::path::Path;

use nix::sys::stat::{fchmod, Mode};
use strata_tests::{on_both, Backend, Layers, Mounted};

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Tries every way to make the server copy up the file behind `fd`.
fn provoke_copy_up(fd: &File) -> Vec<String> {
    let mut results = vec![format!(
        "fchmod: {:?}",
        fchmod(fd, Mode::from_bits_truncate(0o600))
    )];
    let reopen = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let w = fs::OpenOptions::new()
        .write(true)
        .open(&reopen)
        .and_then(|f| {
            use std::io::Write;
            (&f).write_all(b"escaped?")
        });
    results.push(format!("reopen for write: {w:?}"));
    results.push(format!(
        "fsetxattr: {:?}",
        strata_tests::sys::lsetxattr(Path::new(&reopen), "user.escape", b"x")
    ));
    results
}

fn assert_contained(m: &Mounted, victim: &Path, results: &[String], lower_rel: &str) {
    assert_eq!(
        listing(victim),
        Vec::<String>::new(),
        "the server wrote outside its layers, into {} (results: {results:?})",
        victim.display()
    );
    assert_eq!(
        fs::read(m.lowers()[0].join(lower_rel)).expect("read lower"),
        b"lower\n",
        "the lower file changed"
    );
}

/// The file's parents were removed through the mount and the top one
/// replaced by a symlink to a host directory while an fd stayed open.
fn deleted_parent_replaced_by_symlink(backend: &Backend) {
    let m = Layers::new()
        .lower(|l| l.file("p/q/f", "lower\n"))
        .mount(backend);
    let victim = m.root().join("victim");
    fs::create_dir(&victim).expect("mkdir victim");
    let fd = File::open(m.join("p/q/f")).expect("open the lower file");
    fs::remove_dir_all(m.join("p")).expect("rm -rf p through the mount");
    symlink(&victim, m.join("p")).expect("symlink p -> victim through the mount");
    let results = provoke_copy_up(&fd);
    assert_contained(&m, &victim, &results, "p/q/f");
}
on_both!(
    deleted_parent_replaced_by_symlink,
    deleted_parent_replaced_by_symlink
);

/// The file's lower parent directory was renamed (strata supports this; the
/// kernel says EXDEV and the scenario cannot arise) and a symlink to a host
/// directory put under the old name while an fd stayed open.
fn renamed_parent_replaced_by_symlink(backend: &Backend) {
    let m = Layers::new()
        .lower(|l| l.file("a/b/f", "lower\n"))
        .mount(backend);
    let victim = m.root().join("victim");
    fs::create_dir(&victim).expect("mkdir victim");
    let fd = File::open(m.join("a/b/f")).expect("open the lower file");
    if let Err(e) = fs::rename(m.join("a"), m.join("a_old")) {
        assert_eq!(e.raw_os_error(), Some(libc::EXDEV), "rename of a lower dir");
        return; // no lower-dir renames: nothing to attack
    }
    symlink(&victim, m.join("a")).expect("symlink a -> victim through the mount");
    let results = provoke_copy_up(&fd);
    assert_contained(&m, &victim, &results, "a/b/f");
    assert_eq!(
        fs::read(m.join("a_old/b/f")).expect("read under the new name"),
        b"escaped?",
        "{results:?}"
    );
}
on_both!(
    renamed_parent_replaced_by_symlink,
    renamed_parent_replaced_by_symlink
);
