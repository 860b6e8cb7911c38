//! The coordinator side: a tonic service that the `moeflow group` command and the router host.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use moeflow_proto::v1::group_bootstrap_server::{GroupBootstrap, GroupBootstrapServer};
use moeflow_proto::v1::{GroupJoinRequest, GroupJoinResponse};
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

use super::{check_address, BootstrapError};
use crate::error::CommError;
use crate::identity::GroupIdentity;

/// Where the coordinator gets the NCCL unique id when a joiner asks for one. NCCL's unique id
/// names a bootstrap root that lives in the process which created it, so that process must
/// stay up while the ranks initialise and be reachable from them.
#[derive(Clone)]
pub enum NcclIdSource {
    /// No id can be given; joiners asking for one are refused with this reason.
    Unavailable(String),
    /// An id created elsewhere (e.g. by the process hosting rank 0) and handed to every rank.
    Fixed([u8; 128]),
    /// Create the id in this process when the group forms (once per group).
    Generate(Arc<dyn Fn() -> Result<[u8; 128], CommError> + Send + Sync>),
}

impl std::fmt::Debug for NcclIdSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NcclIdSource::Unavailable(r) => write!(f, "Unavailable({r:?})"),
            NcclIdSource::Fixed(_) => write!(f, "Fixed(..)"),
            NcclIdSource::Generate(_) => write!(f, "Generate(..)"),
        }
    }
}

impl Default for NcclIdSource {
    /// With the `nccl` feature: generate in this process (if libnccl is present then);
    /// without it: unavailable.
    fn default() -> Self {
        #[cfg(feature = "nccl")]
        {
            NcclIdSource::Generate(Arc::new(crate::NcclComm::unique_id))
        }
        #[cfg(not(feature = "nccl"))]
        {
            NcclIdSource::Unavailable(
                "this coordinator was built without the `nccl` feature".into(),
            )
        }
    }
}

/// What the coordinator enforces.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Number of ranks; the group forms when this many workers have joined.
    pub world_size: usize,
    /// Every joiner must present this model fingerprint and plan version (and this group id,
    /// or none).
    pub identity: GroupIdentity,
    /// How long a joiner waits for the rest of the group before it is refused with
    /// DEADLINE_EXCEEDED (its slot is then freed for a replacement). Default 120 s.
    pub join_timeout: Duration,
    /// Source of the NCCL unique id.
    pub nccl_id: NcclIdSource,
}

impl CoordinatorConfig {
    pub fn new(world_size: usize, identity: GroupIdentity) -> Self {
        CoordinatorConfig {
            world_size,
            identity,
            join_timeout: Duration::from_secs(120),
            nccl_id: NcclIdSource::default(),
        }
    }
}

/// The group as formed: what every joiner is told.
#[derive(Debug)]
struct Formed {
    peers: Vec<String>,
    /// `None`: nobody asked; `Some(Err)`: asked but unavailable.
    nccl_id: Option<Result<[u8; 128], String>>,
}

struct State {
    /// Address holding each rank until the group forms.
    slots: Vec<Option<String>>,
    want_nccl: bool,
    formed: Option<Arc<Formed>>,
}

struct Inner {
    cfg: CoordinatorConfig,
    state: Mutex<State>,
    formed_tx: watch::Sender<Option<Arc<Formed>>>,
}

/// Assigns ranks and hands out the membership of one group. Cheap to clone (shared state);
/// host it with [`Coordinator::serve`] or add [`Coordinator::service`] to an existing tonic
/// server.
#[derive(Clone)]
pub struct Coordinator {
    inner: Arc<Inner>,
}

impl Coordinator {
    pub fn new(cfg: CoordinatorConfig) -> Result<Coordinator, CommError> {
        if cfg.world_size == 0 {
            return Err(CommError::InvalidArgument(
                "a group needs at least one rank".into(),
            ));
        }
        if u32::try_from(cfg.world_size).is_err() {
            return Err(CommError::InvalidArgument(format!(
                "world size {} too large",
                cfg.world_size
            )));
        }
        let (formed_tx, _) = watch::channel(None);
        Ok(Coordinator {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    slots: vec![None; cfg.world_size],
                    want_nccl: false,
                    formed: None,
                }),
                cfg,
                formed_tx,
            }),
        })
    }

    /// The gRPC service, for hosting next to other services.
    pub fn service(&self) -> GroupBootstrapServer<Coordinator> {
        GroupBootstrapServer::new(self.clone())
    }

    /// Serves the coordinator on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), BootstrapError> {
        tonic::transport::Server::builder()
            .add_service(self.service())
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .await
            .map_err(BootstrapError::Serve)
    }

    /// Waits until the whole group has joined; returns every rank's address, by rank.
    pub async fn formed(&self) -> Vec<String> {
        let mut rx = self.inner.formed_tx.subscribe();
        let peers = match rx.wait_for(Option::is_some).await {
            Ok(f) => f.as_ref().map(|f| f.peers.clone()).unwrap_or_default(),
            // The sender lives in `self`, so it cannot be dropped while we wait.
            Err(_) => Vec::new(),
        };
        peers
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn check_identity(&self, req: &GroupJoinRequest) -> Result<(), Status> {
        let ours = &self.inner.cfg.identity;
        if !req.group_id.is_empty() && req.group_id != ours.group_id {
            return Err(Status::failed_precondition(format!(
                "group_id differs: this coordinator runs {:?}, the joiner asked for {:?}",
                ours.group_id, req.group_id
            )));
        }
        if req.model_fingerprint != ours.model_fingerprint {
            return Err(Status::failed_precondition(format!(
                "model_fingerprint differs: the group runs {:?}, the joiner loaded {:?}",
                ours.model_fingerprint, req.model_fingerprint
            )));
        }
        if req.plan_version != ours.plan_version {
            return Err(Status::failed_precondition(format!(
                "plan_version differs: the group runs plan version {}, the joiner has {}",
                ours.plan_version, req.plan_version
            )));
        }
        check_address(&req.address).map_err(Status::invalid_argument)
    }

    /// Gives the joiner a rank (the same one again when a worker retries with the same
    /// address), and forms the group when the last slot fills. `Ok((rank, formed_now))`.
    fn claim(&self, req: &GroupJoinRequest) -> Result<usize, Status> {
        let world = self.inner.cfg.world_size;
        let mut st = self.lock();
        let held = st
            .slots
            .iter()
            .position(|s| s.as_deref() == Some(req.address.as_str()));
        let requested = req.requested_rank.map(|r| r as usize);
        if let Some(r) = requested {
            if r >= world {
                return Err(Status::invalid_argument(format!(
                    "requested rank {r} out of range for a group of {world}"
                )));
            }
        }
        let rank = match (held, requested) {
            (Some(h), Some(r)) if h != r => {
                return Err(Status::already_exists(format!(
                    "{} already holds rank {h}, cannot take rank {r} too",
                    req.address
                )))
            }
            (Some(h), _) => h,
            (None, _) if st.formed.is_some() => {
                return Err(Status::failed_precondition(format!(
                    "the group of {world} has already formed without {}",
                    req.address
                )))
            }
            (None, Some(r)) => match &st.slots[r] {
                Some(other) => {
                    return Err(Status::already_exists(format!(
                        "rank {r} is already taken by {other}"
                    )))
                }
                None => r,
            },
            (None, None) => st.slots.iter().position(Option::is_none).ok_or_else(|| {
                Status::resource_exhausted(format!("all {world} ranks are taken"))
            })?,
        };
        st.slots[rank] = Some(req.address.clone());
        st.want_nccl |= req.want_nccl_id;
        tracing::info!(rank, address = %req.address, "worker joined");
        if st.formed.is_none() && st.slots.iter().all(Option::is_some) {
            let formed = Arc::new(Formed {
                peers: st.slots.iter().flatten().cloned().collect(),
                nccl_id: st.want_nccl.then(|| self.nccl_id()),
            });
            st.formed = Some(formed.clone());
            self.inner.formed_tx.send_replace(Some(formed));
            tracing::info!(world, "group formed");
        }
        Ok(rank)
    }

    fn nccl_id(&self) -> Result<[u8; 128], String> {
        match &self.inner.cfg.nccl_id {
            NcclIdSource::Unavailable(reason) => Err(reason.clone()),
            NcclIdSource::Fixed(id) => Ok(*id),
            NcclIdSource::Generate(f) => f().map_err(|e| e.to_string()),
        }
    }

    /// Frees `rank` if the group has not formed and `address` still holds it.
    fn release(&self, rank: usize, address: &str) {
        let mut st = self.lock();
        if st.formed.is_none() && st.slots[rank].as_deref() == Some(address) {
            st.slots[rank] = None;
            tracing::info!(rank, %address, "joiner left before the group formed");
        }
    }

    fn response(
        &self,
        rank: usize,
        req: &GroupJoinRequest,
        formed: &Formed,
    ) -> Result<GroupJoinResponse, Status> {
        let id = &self.inner.cfg.identity;
        let nccl_unique_id = match (&formed.nccl_id, req.want_nccl_id) {
            (Some(Ok(nccl)), _) => nccl.to_vec(),
            (Some(Err(reason)), true) => {
                return Err(Status::failed_precondition(format!(
                "an NCCL unique id was requested but is not available on the coordinator: {reason}"
            )))
            }
            _ => Vec::new(),
        };
        Ok(GroupJoinResponse {
            rank: rank as u32,
            world_size: self.inner.cfg.world_size as u32,
            peers: formed.peers.clone(),
            group_id: id.group_id.clone(),
            model_fingerprint: id.model_fingerprint.clone(),
            plan_version: id.plan_version,
            nccl_unique_id,
        })
    }
}

/// Frees a joiner's slot when its call ends before the group formed (timeout, or the client
/// went away and the call was dropped), so that a replacement worker can take it.
struct SlotGuard<'a> {
    coordinator: &'a Coordinator,
    rank: usize,
    address: &'a str,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.coordinator.release(self.rank, self.address);
    }
}

#[tonic::async_trait]
impl GroupBootstrap for Coordinator {
    async fn join(
        &self,
        request: Request<GroupJoinRequest>,
    ) -> Result<Response<GroupJoinResponse>, Status> {
        let req = request.into_inner();
        if let Err(status) = self.check_identity(&req) {
            tracing::warn!(address = %req.address, reason = status.message(), "join refused");
            return Err(status);
        }
        let rank = self.claim(&req)?;
        let _guard = SlotGuard {
            coordinator: self,
            rank,
            address: &req.address,
        };
        let mut rx = self.inner.formed_tx.subscribe();
        let timeout = self.inner.cfg.join_timeout;
        let formed = match tokio::time::timeout(timeout, rx.wait_for(Option::is_some)).await {
            Ok(Ok(f)) => f.clone(),
            Ok(Err(_)) => return Err(Status::unavailable("coordinator is shutting down")),
            Err(_) => {
                let st = self.lock();
                let missing: Vec<usize> = (0..st.slots.len())
                    .filter(|&r| st.slots[r].is_none())
                    .collect();
                let joined = st.slots.len() - missing.len();
                return Err(Status::deadline_exceeded(format!(
                    "the group did not form within {timeout:?}: {joined} of {} ranks joined, missing ranks {missing:?}",
                    st.slots.len()
                )));
            }
        };
        let Some(formed) = formed else {
            return Err(Status::internal("group formed without a membership"));
        };
        self.response(rank, &req, &formed).map(Response::new)
    }
}
