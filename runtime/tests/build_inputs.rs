//! Archives that `ADD` unpacks are bounded like layers: a GNU long name of
//! 16 MiB (a metadata bomb) fails the build with one line naming the
//! limit, instead of being read whole by the tar crate.

mod common;

use std::fs;
use std::io::Write;

use common::Env;

#[test]
fn add_of_an_archive_with_a_huge_long_name_fails_with_the_limit() {
    let env = Env::new();
    let ctx = env.dir.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    // A sparse file: the long name's 16 MiB are a hole on disk.
    let size = 16u64 << 20;
    let mut h = tar::Header::new_ustar();
    h.set_path("././@LongLink").unwrap();
    h.set_entry_type(tar::EntryType::GNULongName);
    h.set_size(size);
    h.set_cksum();
    let bomb = ctx.join("bomb.tar");
    fs::write(&bomb, h.as_bytes()).unwrap();
    fs::File::options()
        .write(true)
        .open(&bomb)
        .unwrap()
        .set_len(512 + size)
        .unwrap();
    let mut f = fs::File::options().append(true).open(&bomb).unwrap();
    let mut t = tar::Header::new_ustar();
    t.set_path("f").unwrap();
    t.set_size(0);
    t.set_mode(0o644);
    t.set_cksum();
    f.write_all(t.as_bytes()).unwrap();
    f.write_all(&[0u8; 1024]).unwrap();
    drop(f);
    fs::write(
        ctx.join("Containerfile"),
        "FROM busybox\nADD bomb.tar /x/\n",
    )
    .unwrap();
    let r = env.run(&["build", "-t", "bomb", ctx.to_str().unwrap()]);
    assert_eq!(r.code, 125, "{r:?}");
    assert!(
        r.stderr.contains("line 2")
            && r.stderr
                .contains("GNU long name header of 16777216 bytes, over the limit of 1 MiB"),
        "{r:?}"
    );
    assert_eq!(r.stderr.lines().count(), 1, "one line: {r:?}");
    assert_ne!(env.run(&["inspect", "--type", "image", "bomb"]).code, 0);
}
