//! The operator gRPC API (`moeflow.v1.Admin`), served next to `Generation` on the router's
//! gRPC port: apply a placement plan to a running group, read a group's plan.

use std::sync::Arc;

use moeflow_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::scheduler::{ApplyPlanError, Scheduler};

/// `Admin` over the router's scheduler.
#[derive(Clone)]
pub struct AdminService {
    scheduler: Arc<Scheduler>,
}

impl AdminService {
    pub fn new(scheduler: Arc<Scheduler>) -> Self {
        Self { scheduler }
    }

    /// The tonic server of this service (plans of large models exceed tonic's 4 MiB default).
    pub fn into_server(self) -> pb::admin_server::AdminServer<Self> {
        pb::admin_server::AdminServer::new(self).max_decoding_message_size(64 << 20)
    }
}

fn status_of(e: ApplyPlanError) -> Status {
    let msg = e.to_string();
    match e {
        ApplyPlanError::NoGroup(_) | ApplyPlanError::Refused { .. } => {
            Status::invalid_argument(msg)
        }
        ApplyPlanError::Busy(_) => Status::failed_precondition(msg),
        ApplyPlanError::NotSwitched { .. } => Status::aborted(msg),
        ApplyPlanError::GroupFailed { .. } | ApplyPlanError::Stopped => Status::unavailable(msg),
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn apply_plan(
        &self,
        request: Request<pb::ApplyPlanRequest>,
    ) -> Result<Response<pb::ApplyPlanResponse>, Status> {
        let req = request.into_inner();
        let done = self
            .scheduler
            .apply_plan(&req.group, req.plan_json)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::ApplyPlanResponse {
            old_version: done.old_version,
            new_version: done.new_version,
            experts_loaded: done.experts_loaded,
            bytes_loaded: done.bytes_loaded,
            experts_dropped: done.experts_dropped,
            prepare_seconds: done.prepare_seconds,
            commit_seconds: done.commit_seconds,
        }))
    }

    async fn get_plan(
        &self,
        request: Request<pb::GroupPlanRequest>,
    ) -> Result<Response<pb::GroupPlanResponse>, Status> {
        let group = request.into_inner().group;
        let p = self.scheduler.plan(&group).await.map_err(status_of)?;
        Ok(Response::new(pb::GroupPlanResponse {
            group: p.group,
            plan_json: p.plan_json,
            plan_version: p.version,
        }))
    }
}
