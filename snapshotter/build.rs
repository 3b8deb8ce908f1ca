//! Generates the gRPC server and client of containerd's Snapshots service
//! from the vendored protos (proto/, Apache-2.0, see proto/LICENSE) with
//! the system's `protoc` (Debian: protobuf-compiler, libprotobuf-dev for
//! the google/protobuf imports).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = "proto/containerd/api";
    println!("cargo:rerun-if-changed=proto");
    let mut config = prost_build::Config::new();
    // Its comment has an indented line, which rustdoc would run as a doctest.
    config.disable_comments([".containerd.services.snapshots.v1.ListSnapshotsRequest.filters"]);
    tonic_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos_with_config(
            config,
            &[format!("{root}/services/snapshots/v1/snapshots.proto")],
            &[root.to_string(), "/usr/include".to_string()],
        )?;
    Ok(())
}
