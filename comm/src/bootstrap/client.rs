//! The worker side: join a coordinator and get the group's membership.

use std::time::{Duration, Instant};

use moeflow_proto::v1::group_bootstrap_client::GroupBootstrapClient;
use moeflow_proto::v1::{GroupJoinRequest, GroupJoinResponse};
use tonic::transport::{Channel, Endpoint};

use super::{check_address, BootstrapError};
use crate::identity::GroupIdentity;

/// What a worker tells the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRequest {
    /// "host:port" of this worker's comm listener, reachable from every other rank.
    pub address: String,
    /// A fixed rank (Kubernetes LeaderWorkerSet: `LWS_WORKER_INDEX`), or `None` for the next
    /// free rank in join order.
    pub requested_rank: Option<usize>,
    /// Group id (empty: whatever the coordinator runs), model fingerprint and plan version.
    pub identity: GroupIdentity,
    /// Ask for an NCCL unique id.
    pub want_nccl_id: bool,
}

/// The group as the coordinator formed it; the same for every rank except `rank`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub rank: usize,
    pub world_size: usize,
    /// Comm address of every rank, by rank: the `peers` argument of `TcpComm::connect`.
    pub peers: Vec<String>,
    pub identity: GroupIdentity,
    /// Present when any joiner asked for one.
    pub nccl_unique_id: Option<[u8; 128]>,
}

/// Joins the group run by the coordinator at `coordinator_url` (e.g. "http://host:port").
/// Retries reaching the coordinator for up to `connect_timeout` (workers may start first),
/// then waits (at most the coordinator's join timeout) until the whole group has joined.
pub async fn join(
    coordinator_url: &str,
    request: JoinRequest,
    connect_timeout: Duration,
) -> Result<Membership, BootstrapError> {
    check_address(&request.address).map_err(|msg| BootstrapError::Refused {
        code: tonic::Code::InvalidArgument,
        message: msg,
    })?;
    let requested_rank = request
        .requested_rank
        .map(|r| {
            u32::try_from(r).map_err(|_| BootstrapError::Refused {
                code: tonic::Code::InvalidArgument,
                message: format!("requested rank {r} too large"),
            })
        })
        .transpose()?;
    let mut client = connect(coordinator_url, connect_timeout).await?;
    let proto = GroupJoinRequest {
        group_id: request.identity.group_id.clone(),
        address: request.address.clone(),
        requested_rank,
        model_fingerprint: request.identity.model_fingerprint.clone(),
        plan_version: request.identity.plan_version,
        want_nccl_id: request.want_nccl_id,
    };
    let response = client
        .join(proto)
        .await
        .map_err(|s| BootstrapError::Refused {
            code: s.code(),
            message: s.message().to_string(),
        })?
        .into_inner();
    membership(&request, response)
}

/// [`join`] for synchronous callers (the worker process before it starts its runtime).
pub fn join_blocking(
    coordinator_url: &str,
    request: JoinRequest,
    connect_timeout: Duration,
) -> Result<Membership, BootstrapError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BootstrapError::Runtime)?;
    rt.block_on(join(coordinator_url, request, connect_timeout))
}

async fn connect(
    url: &str,
    timeout: Duration,
) -> Result<GroupBootstrapClient<Channel>, BootstrapError> {
    let endpoint =
        Endpoint::from_shared(url.to_string()).map_err(|e| BootstrapError::InvalidUrl {
            url: url.to_string(),
            msg: e.to_string(),
        })?;
    let deadline = Instant::now() + timeout;
    let mut backoff = Duration::from_millis(20);
    loop {
        match endpoint.connect().await {
            Ok(channel) => return Ok(GroupBootstrapClient::new(channel)),
            Err(e) => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(BootstrapError::Unreachable {
                        url: url.to_string(),
                        after: timeout,
                        source: e,
                    });
                }
                tracing::debug!(%url, error = %e, "coordinator not reachable yet, retrying");
                tokio::time::sleep(backoff.min(deadline - now)).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
        }
    }
}

/// Checks the coordinator's answer before anyone dials the addresses in it.
fn membership(request: &JoinRequest, r: GroupJoinResponse) -> Result<Membership, BootstrapError> {
    let bad = |m: String| Err(BootstrapError::BadResponse(m));
    let rank = r.rank as usize;
    let world_size = r.world_size as usize;
    if world_size == 0 || rank >= world_size {
        return bad(format!(
            "rank {rank} out of range for world size {world_size}"
        ));
    }
    if r.peers.len() != world_size {
        return bad(format!(
            "{} peer addresses for a group of {world_size}",
            r.peers.len()
        ));
    }
    if r.peers[rank] != request.address {
        return bad(format!(
            "rank {rank} has address {:?}, we joined with {:?}",
            r.peers[rank], request.address
        ));
    }
    if let Some(want) = request.requested_rank {
        if want != rank {
            return bad(format!("asked for rank {want}, got {rank}"));
        }
    }
    let nccl_unique_id = match r.nccl_unique_id.len() {
        0 => None,
        128 => {
            let mut id = [0u8; 128];
            id.copy_from_slice(&r.nccl_unique_id);
            Some(id)
        }
        n => return bad(format!("NCCL unique id of {n} bytes (expected 128)")),
    };
    if request.want_nccl_id && nccl_unique_id.is_none() {
        return bad("asked for an NCCL unique id, got none".into());
    }
    let identity = GroupIdentity {
        group_id: r.group_id,
        model_fingerprint: r.model_fingerprint,
        plan_version: r.plan_version,
    };
    if identity.model_fingerprint != request.identity.model_fingerprint
        || identity.plan_version != request.identity.plan_version
    {
        return bad(format!(
            "coordinator answered for model {:?} plan {}, we have model {:?} plan {}",
            identity.model_fingerprint,
            identity.plan_version,
            request.identity.model_fingerprint,
            request.identity.plan_version
        ));
    }
    Ok(Membership {
        rank,
        world_size,
        peers: r.peers,
        identity,
        nccl_unique_id,
    })
}
