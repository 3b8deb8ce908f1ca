//! Import of root filesystem tarballs, and the tar → layer directory rules.

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

use common::*;
use strata_layerdb::{ConfigChange, DiffId, Digest, Error, ImportOptions};

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

