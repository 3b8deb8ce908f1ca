//! Import of root filesystem tarballs, and the tar → layer directory rules.

mod common;

use std::fs;
use std::io::Read;
use std::io::Write;

use common::*;
use strata_layerdb::{ConfigChange, DiffId, Digest, ImportOptions};

fn opts(name: &str) -> ImportOptions {
    ImportOptions {
        name: Some(name.into()),
        created: Some("2024-01-01T00:00:00Z".into()),
        ..Default::default()
    }
}

#[test]
fn import_podman_layer_tar_keeps_its_diff_id() {
    let layer = busybox_layer();
    let (_d, store) = store();
    let id = store.import(&mut &layer[..], &opts("bb")).unwrap();
    let info = store.inspect("bb").unwrap();
    assert_eq!(info.id, id);
    assert_eq!(info.names, vec!["localhost/bb:latest".to_string()]);
    assert_eq!(info.layers.len(), 1);
    assert_eq!(info.layers[0].diff_id.to_string(), BUSYBOX_DIFF);
    let root = &info.layers[0].path;
    assert_eq!(
        fs::read_link(root.join("bin/sh")).unwrap().to_str(),
        Some("busybox")
    );
    assert!(fs::read_to_string(root.join("etc/passwd"))
        .unwrap()
        .contains("root:"));
    // The stored layer rebuilds byte for byte.
    let mut rebuilt = Vec::new();
    store
        .layer_tar(&info.layers[0].chain_id)
        .unwrap()
        .read_to_end(&mut rebuilt)
        .unwrap();
    assert_eq!(rebuilt, layer);
}

#[test]
fn import_gzip_and_zstd_give_the_plain_diff_id() {
    let layer = busybox_layer();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&layer).unwrap();
    let gz = gz.finish().unwrap();
    let zs = zstd::encode_all(&layer[..], 3).unwrap();
    let (_d, store) = store();
    let expect: DiffId = BUSYBOX_DIFF.parse().unwrap();
    for (name, bytes) in [("gz", gz), ("zs", zs)] {
        store.import(&mut &bytes[..], &opts(name)).unwrap();
        let info = store.inspect(name).unwrap();
        assert_eq!(info.layers[0].diff_id, expect, "{name}");
    }
    // Same layer content: stored once.
    assert_eq!(
        std::fs::read_dir(store.root().join("layers"))
            .unwrap()
            .count(),
        1
    );
}

#[test]
fn import_applies_config_changes_and_is_reproducible() {
    let tar = TarBuilder::new().file("bin/app", b"#!/bin/sh").build();
    let mut o = opts("app:v1");
    o.changes = [
        "CMD [\"/bin/app\"]",
        "ENTRYPOINT /bin/sh",
        "ENV PATH=/bin",
        "WORKDIR /srv",
        "USER 1000:1000",
        "LABEL org.example=yes",
        "EXPOSE 8080",
    ]
    .iter()
    .map(|c| c.parse::<ConfigChange>().unwrap())
    .collect();
    o.comment = Some("imported".into());
    let (_d, store) = store();
    let id1 = store.import(&mut &tar[..], &o).unwrap();
    let (_d2, store2) = common::store();
    let id2 = store2.import(&mut &tar[..], &o).unwrap();
    assert_eq!(id1, id2, "same input and time give the same image ID");
    let info = store.inspect("app:v1").unwrap();
    assert_eq!(info.id.0, Digest::of(&info.config_bytes));
    let c = info.config.config.unwrap();
    assert_eq!(c.cmd, Some(vec!["/bin/app".to_string()]));
    assert_eq!(
        c.entrypoint,
        Some(vec!["/bin/sh".into(), "-c".into(), "/bin/sh".into()])
    );
    assert_eq!(c.env, Some(vec!["PATH=/bin".to_string()]));
    assert_eq!(c.working_dir.as_deref(), Some("/srv"));
    assert_eq!(c.user.as_deref(), Some("1000:1000"));
    assert!(c.exposed_ports.unwrap().contains_key("8080/tcp"));
    let h = store.history("app:v1").unwrap();
    assert_eq!(h[0].comment.as_deref(), Some("imported"));
}

#[test]
fn long_names_pax_and_gnu_round_trip_byte_for_byte() {
    // The tar crate writes GNU long-name records; they must be re-assembled exactly.
    let long = format!("{}/{}", "a".repeat(150), "b".repeat(120));
    let tar = TarBuilder::new()
        .file(&long, b"deep")
        .symlink("l", &"c/".repeat(80))
        .build();
    let (_d, store) = store();
    let id = store.import(&mut &tar[..], &opts("long")).unwrap();
    let info = store.inspect(&id.to_string()).unwrap();
    assert_eq!(
        std::fs::read(info.layers[0].path.join(&long)).unwrap(),
        b"deep"
    );
    let mut rebuilt = Vec::new();
    store
        .layer_tar(&info.layers[0].chain_id)
        .unwrap()
        .read_to_end(&mut rebuilt)
        .unwrap();
    assert_eq!(rebuilt, tar);
    assert_eq!(info.layers[0].diff_id.0, Digest::of(&tar));
}

/// A hard link whose target sits at the layer's root (what `commit` packs
/// after `ln /bin/busybox /bb2`: `bb2` sorts first, `bin/busybox` links to
/// it) was refused as "not in this layer".
#[test]
fn hard_link_to_a_file_at_the_layer_root() {
    let tar = TarBuilder::new()
        .file("bb2", b"data")
        .dir("bin/")
        .hardlink("bin/busybox", "bb2")
        .build();
    let (_d, store) = store();
    store.import(&mut &tar[..], &opts("hl")).unwrap();
    let root = &store.inspect("hl").unwrap().layers[0].path;
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (
        fs::metadata(root.join("bb2")).unwrap(),
        fs::metadata(root.join("bin/busybox")).unwrap(),
    );
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
}
