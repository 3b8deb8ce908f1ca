//! The gRPC service: containerd's `containerd.services.snapshots.v1.Snapshots`
//! over a [`Snapshotter`]. A switchboard: each method unpacks its request,
//! runs the operation on a blocking thread (they do file I/O and fsync) and
//! packs the answer; errors become statuses in one place (`error.rs`).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::filter::Filters;
use crate::proto::containerd::services::snapshots::v1 as pb;
use crate::snapshotter::{Info, Snapshotter};
use crate::store::{Kind, Time};

/// Infos per List message; containerd's own proxy sends batches too.
const LIST_BATCH: usize = 100;

/// The service, ready for `pb::snapshots_server::SnapshotsServer::new`.
#[derive(Clone)]
pub struct Service {
    sn: Arc<Snapshotter>,
}

impl Service {
    /// Serves `sn`.
    pub fn new(sn: Arc<Snapshotter>) -> Service {
        Service { sn }
    }

    async fn run<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Snapshotter) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Status> {
        let sn = self.sn.clone();
        match tokio::task::spawn_blocking(move || f(&sn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                tracing::debug!(op, %e, "request failed");
                Err(e.into())
            }
            Err(e) => {
                tracing::error!(op, %e, "request panicked");
                Err(Status::internal(format!("{op}: {e}")))
            }
        }
    }
}

fn labels(m: std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    m.into_iter().collect()
}

fn timestamp(t: Time) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.secs,
        nanos: t.nanos as i32,
    }
}

fn kind(k: Kind) -> pb::Kind {
    match k {
        Kind::View => pb::Kind::View,
        Kind::Active => pb::Kind::Active,
        Kind::Committed => pb::Kind::Committed,
    }
}

fn to_pb(i: Info) -> pb::Info {
    pb::Info {
        name: i.name,
        parent: i.parent.unwrap_or_default(),
        kind: kind(i.kind) as i32,
        created_at: Some(timestamp(i.created)),
        updated_at: Some(timestamp(i.updated)),
        labels: i.labels.into_iter().collect(),
    }
}

type ListStream = Pin<Box<dyn Stream<Item = Result<pb::ListSnapshotsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::snapshots_server::Snapshots for Service {
    async fn prepare(
        &self,
        req: Request<pb::PrepareSnapshotRequest>,
    ) -> Result<Response<pb::PrepareSnapshotResponse>, Status> {
        let r = req.into_inner();
        let mounts = self
            .run("prepare", move |sn| {
                sn.prepare(&r.key, &r.parent, labels(r.labels))
            })
            .await?;
        Ok(Response::new(pb::PrepareSnapshotResponse { mounts }))
    }

    async fn view(
        &self,
        req: Request<pb::ViewSnapshotRequest>,
    ) -> Result<Response<pb::ViewSnapshotResponse>, Status> {
        let r = req.into_inner();
        let mounts = self
            .run("view", move |sn| {
                sn.view(&r.key, &r.parent, labels(r.labels))
            })
            .await?;
        Ok(Response::new(pb::ViewSnapshotResponse { mounts }))
    }

    async fn mounts(
        &self,
        req: Request<pb::MountsRequest>,
    ) -> Result<Response<pb::MountsResponse>, Status> {
        let r = req.into_inner();
        let mounts = self.run("mounts", move |sn| sn.mounts(&r.key)).await?;
        Ok(Response::new(pb::MountsResponse { mounts }))
    }

    async fn commit(
        &self,
        req: Request<pb::CommitSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let r = req.into_inner();
        self.run("commit", move |sn| {
            if !r.parent.is_empty() && sn.stat(&r.key)?.parent.as_deref() != Some(r.parent.as_str())
            {
                return Err(Error::InvalidArgument(format!(
                    "commit of {:?} onto another parent {:?}: rebasing is not supported",
                    r.key, r.parent
                )));
            }
            sn.commit(&r.name, &r.key, labels(r.labels))
        })
        .await?;
        Ok(Response::new(()))
    }

    async fn remove(
        &self,
        req: Request<pb::RemoveSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let r = req.into_inner();
        self.run("remove", move |sn| sn.remove(&r.key)).await?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        req: Request<pb::StatSnapshotRequest>,
    ) -> Result<Response<pb::StatSnapshotResponse>, Status> {
        let r = req.into_inner();
        let info = self.run("stat", move |sn| sn.stat(&r.key)).await?;
        Ok(Response::new(pb::StatSnapshotResponse {
            info: Some(to_pb(info)),
        }))
    }

    async fn update(
        &self,
        req: Request<pb::UpdateSnapshotRequest>,
    ) -> Result<Response<pb::UpdateSnapshotResponse>, Status> {
        let r = req.into_inner();
        let Some(info) = r.info else {
            return Err(Status::invalid_argument(
                "update without an info: name the snapshot",
            ));
        };
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let info = Info {
            name: info.name,
            parent: None,
            kind: Kind::Active,
            created: Time::now(),
            updated: Time::now(),
            labels: labels(info.labels),
        };
        let info = self
            .run("update", move |sn| sn.update(&info, &paths))
            .await?;
        Ok(Response::new(pb::UpdateSnapshotResponse {
            info: Some(to_pb(info)),
        }))
    }

    type ListStream = ListStream;

    async fn list(
        &self,
        req: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let r = req.into_inner();
        let infos = self
            .run("list", move |sn| {
                Ok(sn.list(&Filters::parse_all(&r.filters)?))
            })
            .await?;
        let mut batches = Vec::new();
        let mut it = infos.into_iter().peekable();
        while it.peek().is_some() {
            let info: Vec<pb::Info> = it.by_ref().take(LIST_BATCH).map(to_pb).collect();
            batches.push(Ok(pb::ListSnapshotsResponse { info }));
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn usage(
        &self,
        req: Request<pb::UsageRequest>,
    ) -> Result<Response<pb::UsageResponse>, Status> {
        let r = req.into_inner();
        let u = self.run("usage", move |sn| sn.usage(&r.key)).await?;
        Ok(Response::new(pb::UsageResponse {
            size: u.size,
            inodes: u.inodes,
        }))
    }

    async fn cleanup(&self, _req: Request<pb::CleanupRequest>) -> Result<Response<()>, Status> {
        self.run("cleanup", |sn| sn.cleanup().map(|_| ())).await?;
        Ok(Response::new(()))
    }
}
