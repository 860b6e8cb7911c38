//! Where separately started workers find their group and report their control address.
//!
//! The router hosts one [`Registry`]; each worker of role `prefill` or `decode` calls
//! `Discover` (the coordinator to join, the group size, the placement plan), joins its group,
//! starts its control API and calls `Register`. [`Registry::wait_group`] resolves once every
//! rank of a role has registered, with the control addresses by rank.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use moeflow_proto::v1 as pb;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

/// What a worker of one role is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSlot {
    pub coordinator: String,
    pub world_size: usize,
    pub plan_json: String,
    pub group_id: String,
}

struct Inner {
    slots: HashMap<String, GroupSlot>,
    controls: Mutex<HashMap<String, Vec<Option<String>>>>,
    changed: watch::Sender<u64>,
}

/// The registry of one router; cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl Registry {
    /// `slots` by role name (`prefill`, `decode`).
    pub fn new(slots: HashMap<String, GroupSlot>) -> Self {
        let controls = slots
            .iter()
            .map(|(r, s)| (r.clone(), vec![None; s.world_size]))
            .collect();
        let (changed, _) = watch::channel(0);
        Self {
            inner: Arc::new(Inner {
                slots,
                controls: Mutex::new(controls),
                changed,
            }),
        }
    }

    pub fn service(&self) -> pb::registry_server::RegistryServer<Registry> {
        pb::registry_server::RegistryServer::new(self.clone())
    }

    fn complete(&self, role: &str) -> Option<Vec<String>> {
        let c = self
            .inner
            .controls
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        c.get(role)?.iter().cloned().collect()
    }

    /// Waits until every rank of `role` has registered; returns control addresses by rank.
    pub async fn wait_group(&self, role: &str) -> Vec<String> {
        let mut rx = self.inner.changed.subscribe();
        loop {
            if let Some(v) = self.complete(role) {
                return v;
            }
            if rx.changed().await.is_err() {
                return Vec::new();
            }
        }
    }
}

#[tonic::async_trait]
impl pb::registry_server::Registry for Registry {
    async fn discover(
        &self,
        request: Request<pb::DiscoverRequest>,
    ) -> Result<Response<pb::DiscoverResponse>, Status> {
        let role = request.into_inner().role;
        let slot = self.inner.slots.get(&role).ok_or_else(|| {
            Status::invalid_argument(format!("role: `{role}` is not a group of this router"))
        })?;
        Ok(Response::new(pb::DiscoverResponse {
            coordinator: slot.coordinator.clone(),
            world_size: slot.world_size as u32,
            plan_json: slot.plan_json.clone(),
            group_id: slot.group_id.clone(),
        }))
    }

    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let r = request.into_inner();
        {
            let mut c = self
                .inner
                .controls
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let ranks = c.get_mut(&r.role).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "role: `{}` is not a group of this router",
                    r.role
                ))
            })?;
            let n = ranks.len();
            let slot = ranks.get_mut(r.rank as usize).ok_or_else(|| {
                Status::invalid_argument(format!("rank: {} out of range for {n} ranks", r.rank))
            })?;
            *slot = Some(r.control_address.clone());
        }
        tracing::info!(role = %r.role, rank = r.rank, control = %r.control_address, "worker registered");
        self.inner.changed.send_modify(|v| *v += 1);
        Ok(Response::new(pb::RegisterResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::registry_server::Registry as _;

    #[tokio::test]
    async fn group_completes_when_every_rank_registered() {
        let slots = [(
            "decode".to_string(),
            GroupSlot {
                coordinator: "http://c".into(),
                world_size: 2,
                plan_json: "{}".into(),
                group_id: "g".into(),
            },
        )]
        .into_iter()
        .collect();
        let reg = Registry::new(slots);
        let d = reg
            .discover(Request::new(pb::DiscoverRequest {
                role: "decode".into(),
            }))
            .await
            .unwrap();
        assert_eq!(d.into_inner().world_size, 2);
        assert!(reg
            .discover(Request::new(pb::DiscoverRequest { role: "x".into() }))
            .await
            .is_err());
        let wait = tokio::spawn({
            let reg = reg.clone();
            async move { reg.wait_group("decode").await }
        });
        for rank in [1u32, 0] {
            reg.register(Request::new(pb::RegisterRequest {
                role: "decode".into(),
                rank,
                control_address: format!("h:{rank}"),
            }))
            .await
            .unwrap();
        }
        assert_eq!(
            wait.await.unwrap(),
            vec!["h:0".to_string(), "h:1".to_string()]
        );
        let bad = reg
            .register(Request::new(pb::RegisterRequest {
                role: "decode".into(),
                rank: 5,
                control_address: "h".into(),
            }))
            .await;
        assert!(bad.is_err());
    }
}
