//! Round trips the kernel should not need, counted with `-o stats=`.
//! These count requests, never time: a count that grows back is a
//! regression whatever the machine.

use std::fs;

use strata_tests::stats::count;
use strata_tests::sys::lgetxattr;
use strata_tests::{Backend, Layers, Mounted};

const FILES: usize = 300;

/// What `ls -l` does per entry: lstat, then ask for the ACL.
fn ls_l(m: &Mounted) {
    let mut seen = 0;
    for e in fs::read_dir(m.join("d")).unwrap() {
        let e = e.unwrap();
        let md = fs::symlink_metadata(e.path()).unwrap();
        let name = e.file_name().into_string().unwrap();
        let i: usize = name[1..].parse().unwrap();
        assert_eq!(md.len(), format!("file {i}\n").len() as u64, "{name}");
        let acl = lgetxattr(&e.path(), "system.posix_acl_access");
        assert!(acl.is_err(), "{name}: no ACL was set, got {acl:?}");
        seen += 1;
    }
    assert_eq!(seen, FILES);
}

/// A listing re-read with READDIRPLUS must not hand the kernel entries it
/// already holds: relinking them makes it drop the ACLs it cached, and
/// `ls -l` then pays a GETXATTR per file again.
#[test]
fn relisting_a_directory_keeps_the_kernels_cached_acls() {
    let layers = Layers::new().lower(|mut l| {
        for i in 0..FILES {
            l = l.file(format!("d/f{i}"), format!("file {i}\n"));
        }
        l
    });
    let mut m: Mounted = layers.materialize(false);
    let stats = m.root().join("stats");
    m.set_extra_options(Some(&format!("stats={}", stats.display())));
    m.mount_again(Backend::strata(), false);

    ls_l(&m);
    // A change to the directory drops the kernel's copy of its listing, so
    // the next listing is read again from the start, with READDIRPLUS.
    fs::write(m.join("d/new"), "x").unwrap();
    fs::remove_file(m.join("d/new")).unwrap();
    ls_l(&m);
    m.unmount();

    let getxattrs = count(&stats, "getxattr");
    let relisted = count(&stats, "readdirplus");
    assert!(
        relisted >= 2,
        "the test needs a second READDIRPLUS listing, stats: {relisted}"
    );
    assert!(
        getxattrs < (FILES + FILES / 2) as u64,
        "{getxattrs} GETXATTRs for two `ls -l` of {FILES} files: the second listing made \
         the kernel forget the ACLs it had cached"
    );
}
