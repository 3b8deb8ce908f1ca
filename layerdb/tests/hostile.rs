//! The hostile-archive corpus: every bad input is refused with an error
//! naming the entry or blob, and the store is left exactly as before.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::Path;

use common::*;
use strata_layerdb::{Error, ImportOptions, LoadOptions, Store, StoreOptions};
use tar::EntryType;

/// Every file under the store root with its size, except the lock file.
fn snapshot(store: &Store) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, d: &Path, out: &mut BTreeMap<String, u64>) {
        for e in fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let md = fs::symlink_metadata(e.path()).unwrap();
            let rel = e
                .path()
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.insert(rel, if md.is_dir() { 0 } else { md.len() });
            if md.is_dir() {
                walk(root, &e.path(), out);
            }
        }
    }
    walk(store.root(), store.root(), &mut out);
    out
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn layer_cases() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let ok = TarBuilder::new().file("a", b"hello world").build();
    let mut truncated = ok.clone();
    truncated.truncate(512 + 5);
    let mut no_end = ok.clone();
    no_end.truncate(1024);
    let mut bad_sum = ok.clone();
    bad_sum[0] ^= 0x55;
    let mut gz = gzip(&TarBuilder::new().file("a", &vec![1u8; 100_000]).build());
    let l = gz.len();
    gz.truncate(l / 2);
    let mut zs = zstd::encode_all(
        &TarBuilder::new().file("a", &vec![1u8; 100_000]).build()[..],
        3,
    )
    .unwrap();
    let l = zs.len();
    for b in &mut zs[l / 2..] {
        *b ^= 0xa5;
    }
    vec![
        (
            "dotdot",
            TarBuilder::new()
                .raw(b"../evil", EntryType::Regular, b"", b"x")
                .build(),
            "../evil",
        ),
        (
            "dotdot-inner",
            TarBuilder::new()
                .raw(b"a/../../evil", EntryType::Regular, b"", b"x")
                .build(),
            "a/../../evil",
        ),
        (
            "absolute",
            TarBuilder::new()
                .raw(b"/etc/evil", EntryType::Regular, b"", b"x")
                .build(),
            "/etc/evil",
        ),
        (
            "symlink-out",
            TarBuilder::new().symlink("x", "../../etc").build(),
            "points out of the layer",
        ),
        (
            "hardlink-abs",
            TarBuilder::new()
                .raw(b"h", EntryType::Link, b"/etc/passwd", b"")
                .build(),
            "hard link",
        ),
        (
            "hardlink-dotdot",
            TarBuilder::new()
                .raw(b"h", EntryType::Link, b"../x", b"")
                .build(),
            "hard link",
        ),
        (
            "hardlink-missing",
            TarBuilder::new().hardlink("h", "nothere").build(),
            "not in this layer",
        ),
        (
            "through-symlink",
            TarBuilder::new()
                .symlink("d", "/etc")
                .raw(b"d/passwd", EntryType::Regular, b"", b"x")
                .build(),
            "symlink",
        ),
        (
            "duplicate",
            TarBuilder::new().file("a", b"1").file("a", b"2").build(),
            "duplicate",
        ),
        (
            "duplicate-dir",
            TarBuilder::new().dir("d/").dir("d/").build(),
            "duplicate",
        ),
        (
            "file-over-dir",
            TarBuilder::new().file("d/x", b"1").file("d", b"2").build(),
            "\"d\"",
        ),
        ("truncated", truncated, "truncated"),
        ("no-end-marker", no_end, "end-of-archive"),
        ("bad-checksum", bad_sum, "checksum"),
        ("garbage", vec![0x42; 4096], "checksum"),
        ("truncated-gzip", gz, "imported tarball"),
        ("corrupt-zstd", zs, "imported tarball"),
        ("empty", Vec::new(), "end-of-archive"),
    ]
}

#[test]
fn hostile_layer_tars_are_refused_and_leave_nothing() {
    let (_d, store) = store();
    // A good image first, so "as before" is not just "empty".
    store
        .import(
            &mut &busybox_layer()[..],
            &ImportOptions {
                name: Some("base".into()),
                ..Default::default()
            },
        )
        .unwrap();
    let before = snapshot(&store);
    for (name, tar, needle) in layer_cases() {
        let err = store
            .import(
                &mut &tar[..],
                &ImportOptions {
                    name: Some("evil".into()),
                    ..Default::default()
                },
            )
            .expect_err(name);
        let msg = err.to_string();
        assert!(
            msg.contains(needle),
            "{name}: {msg:?} should mention {needle:?}"
        );
        assert_eq!(snapshot(&store), before, "{name}: store changed");
    }
    assert!(!Path::new("/etc/evil").exists());
    assert!(store.check(false).unwrap().is_clean());
}

#[test]
fn device_nodes_are_refused_in_an_unprivileged_store() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open_with(d.path().join("r"), &StoreOptions { unprivileged: true }).unwrap();
    let before = snapshot(&store);
    let tar = TarBuilder::new().chardev("dev/null", 1, 3).build();
    let err = store
        .import(&mut &tar[..], &ImportOptions::default())
        .unwrap_err();
    assert!(matches!(err, Error::BadEntry { .. }), "{err}");
    assert!(err.to_string().contains("dev/null"));
    assert_eq!(snapshot(&store), before);
}

/// One tar member: name, data, type, link target.
type Member = (String, Vec<u8>, EntryType, String);

/// The members of a tar file, in order.
fn members(path: &Path) -> Vec<Member> {
    let mut ar = tar::Archive::new(fs::File::open(path).unwrap());
    let mut out = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let kind = e.header().entry_type();
        let link = e
            .link_name()
            .unwrap()
            .map(|l| l.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut v = Vec::new();
        e.read_to_end(&mut v).unwrap();
        out.push((name, v, kind, link));
    }
    out
}

fn repack(m: &[Member]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data, kind, link) in m {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        if *kind == EntryType::Symlink {
            h.set_size(0);
            b.append_link(&mut h, name, link).unwrap();
        } else {
            b.append_data(&mut h, name, &data[..]).unwrap();
        }
    }
    b.into_inner().unwrap()
}

fn archive_cases() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let docker = members(&fixture("busybox-docker-archive.tar"));
    let oci = members(&fixture("busybox-oci-archive.tar"));
    let edit = |base: &[Member], f: &dyn Fn(&mut Vec<Member>)| {
        let mut m = base.to_vec();
        f(&mut m);
        repack(&m)
    };
    let layer_oci = "blobs/sha256/df840736c260f309f28cbe0c07f707045c3f79ae3c94ca02f26d70aeb20c869f";
    let cfg_oci = "blobs/sha256/b1ef65e51b22207fe0cd9968c26a84e8b25df40809806acd200f5e9036bfcdc4";
    let layer_docker = format!("{}.tar", &BUSYBOX_DIFF[7..]);
    let cfg_docker = format!("{}.json", &BUSYBOX_ID[7..]);
    vec![
        (
            "oci-blob-digest-mismatch",
            edit(&oci, &|m| {
                let e = m.iter_mut().find(|e| e.0 == layer_oci).unwrap();
                // Same size, different content: still valid gzip? No: the digest check names the blob.
                let n = e.1.len();
                e.1[n - 9] ^= 1; // flip a bit of the gzip CRC
            }),
            "df840736",
        ),
        (
            "oci-missing-blob",
            edit(&oci, &|m| m.retain(|e| e.0 != layer_oci)),
            "missing blob",
        ),
        (
            "oci-config-unparsable",
            edit(&oci, &|m| {
                // Replace the config with junk and fix its name so only parsing fails.
                let junk = b"{not json".to_vec();
                let d = strata_layerdb::Digest::of(&junk);
                let e = m.iter_mut().find(|e| e.0 == cfg_oci).unwrap();
                e.1 = junk;
                e.0 = format!("blobs/sha256/{}", d.hex());
            }),
            "blobs/sha256/b1ef",
        ),
        (
            "docker-layer-diffid-mismatch",
            edit(&docker, &|m| {
                let e = m.iter_mut().find(|e| e.0 == layer_docker).unwrap();
                let l = e.1.len();
                e.1[l - 1] = 1; // a trailing zero of the padding: still extracts
            }),
            "digest mismatch",
        ),
        (
            "docker-config-digest-mismatch",
            edit(&docker, &|m| {
                let e = m.iter_mut().find(|e| e.0 == cfg_docker).unwrap();
                e.1.push(b' ');
            }),
            "digest mismatch",
        ),
        (
            "docker-missing-layer",
            edit(&docker, &|m| m.retain(|e| e.0 != layer_docker)),
            "is missing",
        ),
        (
            "not-an-image",
            TarBuilder::new().file("hello", b"x").build(),
            "neither manifest.json",
        ),
        (
            "manifest-unparsable",
            edit(&docker, &|m| {
                m.iter_mut().find(|e| e.0 == "manifest.json").unwrap().1 = b"[{".to_vec()
            }),
            "manifest.json",
        ),
    ]
}

#[test]
fn hostile_image_archives_are_refused_and_leave_nothing() {
    let (d, store) = store();
    store
        .load(
            &fixture("busybox-c1-docker-archive.tar"),
            &LoadOptions::default(),
        )
        .unwrap();
    // Remove the image so that its layers would have to be extracted again.
    store.remove("busybox-c1", false).unwrap();
    let before = snapshot(&store);
    for (name, bytes, needle) in archive_cases() {
        let p = d.path().join(format!("{name}.tar"));
        fs::write(&p, &bytes).unwrap();
        let err = store.load(&p, &LoadOptions::default()).expect_err(name);
        let msg = err.to_string();
        assert!(
            msg.contains(needle),
            "{name}: {msg:?} should mention {needle:?}"
        );
        assert_eq!(snapshot(&store), before, "{name}: store changed");
        // Same through a stream.
        let err = store
            .load_reader(&mut &bytes[..], &LoadOptions::default())
            .expect_err(name);
        assert!(err.to_string().contains(needle), "{name} (stream): {err}");
        assert_eq!(snapshot(&store), before, "{name} (stream): store changed");
    }
}
