//! Interop with archives saved by podman 4.3 (tests/fixtures), and
//! load → save → load round trips in both formats.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use common::*;
use strata_layerdb::{Compression, LoadOptions, SaveFormat, Store};

fn load(store: &Store, name: &str) -> Vec<strata_layerdb::LoadedImage> {
    store
        .load(&fixture(name), &LoadOptions::default())
        .unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

fn check_busybox(store: &Store, reference: &str) {
    let info = store.inspect(reference).unwrap();
    assert_eq!(info.id.to_string(), BUSYBOX_ID);
    assert_eq!(info.names, vec!["localhost/busybox:latest".to_string()]);
    assert_eq!(info.layers.len(), 1);
    assert_eq!(info.layers[0].diff_id.to_string(), BUSYBOX_DIFF);
    let root = &info.layers[0].path;
    assert_eq!(
        fs::read_link(root.join("bin/vi")).unwrap().to_str(),
        Some("busybox")
    );
    assert!(fs::read_to_string(root.join("etc/passwd"))
        .unwrap()
        .starts_with("root:"));
    assert_eq!(
        info.config.config.as_ref().unwrap().cmd,
        Some(vec!["/bin/sh".to_string()])
    );
}

fn check_c1(store: &Store) {
    let info = store.inspect("busybox-c1").unwrap();
    assert_eq!(info.id.to_string(), C1_ID);
    assert_eq!(info.names, vec!["localhost/busybox-c1:latest".to_string()]);
    let diffs: Vec<String> = info.layers.iter().map(|l| l.diff_id.to_string()).collect();
    assert_eq!(diffs, vec![BUSYBOX_DIFF.to_string(), C1_DIFF.to_string()]);
    let top = &info.layers[1].path;
    assert_eq!(fs::read_to_string(top.join("root/file")).unwrap(), "data\n");
    assert!(top.join("opt/d").is_dir());
    // bin/.wh.vi became an overlay whiteout.
    let md = fs::symlink_metadata(top.join("bin/vi")).unwrap();
    assert!(
        md.file_type().is_char_device(),
        "expected a 0/0 whiteout device"
    );
    assert_eq!(md.rdev(), 0);
    assert!(!top.join("bin/.wh.vi").exists());
    // Lower dirs are top first.
    let lowers = store.lower_dirs("busybox-c1").unwrap();
    assert_eq!(
        lowers,
        vec![info.layers[1].path.clone(), info.layers[0].path.clone()]
    );
    // History pairs steps with layers, newest first.
    let h = store.history("busybox-c1").unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(h[0].created_by.as_deref(), Some("/bin/sh"));
    assert_eq!(h[0].layer.map(|d| d.to_string()).as_deref(), Some(C1_DIFF));
    assert_eq!(h[0].size, 5);
}

#[test]
fn podman_docker_archive_loads() {
    let (_d, store) = store();
    let loaded = load(&store, "busybox-docker-archive.tar");
    assert_eq!(loaded.len(), 1);
    assert_eq!(
        loaded[0].names,
        vec!["localhost/busybox:latest".to_string()]
    );
    check_busybox(&store, "busybox");
    check_busybox(&store, "localhost/busybox:latest");
    check_busybox(&store, "b1ef65e5");
    check_busybox(&store, BUSYBOX_ID);
}

#[test]
fn podman_oci_archive_loads() {
    let (_d, store) = store();
    let loaded = load(&store, "busybox-oci-archive.tar");
    assert_eq!(loaded.len(), 1);
    check_busybox(&store, "busybox:latest");
}

#[test]
fn podman_two_layer_archives_load_and_share_the_base() {
    for name in [
        "busybox-c1-docker-archive.tar",
        "busybox-c1-oci-archive.tar",
    ] {
        let (_d, store) = store();
        load(&store, "busybox-docker-archive.tar");
        load(&store, name);
        check_c1(&store);
        check_busybox(&store, "busybox");
        // Two layers on disk, not three.
        let n = fs::read_dir(store.root().join("layers")).unwrap().count();
        assert_eq!(n, 2, "{name}");
        // Loading again changes nothing.
        load(&store, name);
        assert_eq!(store.images().unwrap().len(), 2);
    }
}

fn round_trip(format: SaveFormat) {
    let (d, store) = store();
    load(&store, "busybox-c1-docker-archive.tar");
    load(&store, "busybox-oci-archive.tar");
    let out = d.path().join("out.tar");
    let mut f = fs::File::create(&out).unwrap();
    store
        .save(&["busybox-c1", "busybox"], format, &mut f)
        .unwrap();
    drop(f);
    let (_d2, again) = common::store();
    let loaded = again.load(&out, &LoadOptions::default()).unwrap();
    let mut ids: Vec<String> = loaded.iter().map(|l| l.id.to_string()).collect();
    ids.sort();
    assert_eq!(ids, vec![C1_ID.to_string(), BUSYBOX_ID.to_string()]);
    check_c1(&again);
    check_busybox(&again, "busybox");
}

#[test]
fn docker_archive_round_trip() {
    round_trip(SaveFormat::DockerArchive);
}

#[test]
fn oci_archive_round_trip_uncompressed() {
    round_trip(SaveFormat::OciArchive(Compression::None));
}

#[test]
fn oci_archive_round_trip_gzip() {
    round_trip(SaveFormat::OciArchive(Compression::Gzip));
}

#[test]
fn oci_dir_round_trip() {
    let (d, store) = store();
    load(&store, "busybox-c1-oci-archive.tar");
    let dir = d.path().join("layout");
    store
        .save_oci_dir(&["busybox-c1"], &dir, Compression::Gzip)
        .unwrap();
    assert!(dir.join("oci-layout").is_file());
    let (_d2, again) = common::store();
    again.load(&dir, &LoadOptions::default()).unwrap();
    check_c1(&again);
}

#[test]
fn saved_docker_archive_matches_podman_layout() {
    let (d, store) = store();
    load(&store, "busybox-c1-oci-archive.tar");
    let out = d.path().join("out.tar");
    let mut f = fs::File::create(&out).unwrap();
    store
        .save(&["busybox-c1"], SaveFormat::DockerArchive, &mut f)
        .unwrap();
    drop(f);
    // The layer files are byte-identical to what podman wrote.
    for diff in [BUSYBOX_DIFF, C1_DIFF] {
        let name = format!("{}.tar", &diff[7..]);
        assert_eq!(
            tar_member(&out, &name),
            tar_member(&fixture("busybox-c1-docker-archive.tar"), &name),
            "{name}"
        );
    }
    let cfg = tar_member(&out, &format!("{}.json", &C1_ID[7..]));
    assert_eq!(
        cfg,
        tar_member(
            &fixture("busybox-c1-docker-archive.tar"),
            &format!("{}.json", &C1_ID[7..])
        )
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&tar_member(&out, "manifest.json")).unwrap();
    assert_eq!(manifest[0]["RepoTags"][0], "localhost/busybox-c1:latest");
}

/// Feeds Strata's output to skopeo when it is installed (Debian package
/// `skopeo`); skipped with a message otherwise.
#[test]
fn skopeo_reads_saved_archives() {
    if std::process::Command::new("skopeo")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("SKIPPED: skopeo is not installed (Debian package `skopeo`)");
        return;
    }
    let (d, store) = store();
    load(&store, "busybox-c1-docker-archive.tar");
    for (format, transport) in [
        (SaveFormat::DockerArchive, "docker-archive"),
        (SaveFormat::OciArchive(Compression::Gzip), "oci-archive"),
    ] {
        let out = d.path().join(format!("{transport}.tar"));
        let mut f = fs::File::create(&out).unwrap();
        store.save(&["busybox-c1"], format, &mut f).unwrap();
        drop(f);
        let o = std::process::Command::new("skopeo")
            .args([
                "inspect",
                "--config",
                &format!("{transport}:{}", out.display()),
            ])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "skopeo: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let cfg: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(cfg["rootfs"]["diff_ids"][1], C1_DIFF, "{transport}");
    }
}
