//! A client of the service on its unix socket, for tests and tools.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

use crate::proto::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;

/// Connects to the snapshotter listening on the unix socket `path`.
pub async fn connect(path: &Path) -> Result<SnapshotsClient<Channel>, tonic::transport::Error> {
    let path: PathBuf = path.to_path_buf();
    // The URI is required by the API and ignored: the connector dials the socket.
    let channel = Endpoint::from_static("http://strata-snapshotter.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await?;
    Ok(SnapshotsClient::new(channel))
}
