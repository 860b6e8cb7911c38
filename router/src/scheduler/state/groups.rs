//! The scheduler's handle on each group: its client, its budget, and its health.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use super::admission::Budget;
use super::SchedState;
use crate::group::GroupClient;
use moeflow_api::ComponentHealth;

/// Whether a group can step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GroupHealth {
    Up,
    /// A step or a placement switch failed: the group's sequences have ended with an error
    /// and it takes no more work. The reason is shown in `/health`.
    Broken(String),
    /// Being re-formed after breaking; requests wait instead of failing.
    #[expect(dead_code, reason = "nothing re-forms a broken group yet")]
    Healing,
}

impl GroupHealth {
    pub fn is_up(&self) -> bool {
        matches!(self, Self::Up)
    }

    /// Why the group cannot step, if it cannot.
    pub fn why_down(&self) -> Option<&str> {
        match self {
            Self::Up => None,
            Self::Broken(why) => Some(why),
            Self::Healing => Some("the group is being re-formed"),
        }
    }
}

/// One worker group and the scheduler's books on it.
pub(crate) struct GroupState {
    pub client: Arc<dyn GroupClient>,
    pub name: String,
    pub budget: Budget,
    pub health: GroupHealth,
}

impl GroupState {
    pub fn new(client: Arc<dyn GroupClient>, name: String) -> Self {
        let budget = Budget::new(client.world_size());
        Self {
            client,
            name,
            budget,
            health: GroupHealth::Up,
        }
    }

    pub fn component_health(&self) -> ComponentHealth {
        ComponentHealth {
            name: self.name.clone(),
            healthy: self.health.is_up(),
            detail: self.health.why_down().unwrap_or_default().to_string(),
        }
    }
}

impl SchedState {
    /// Publishes every group's health for `/health`; requests are accepted unless the decode
    /// group is broken.
    pub(super) fn publish_health(&self) {
        let mut all = vec![self.decode.component_health()];
        if let Some(p) = &self.prefill {
            all.push(p.component_health());
        }
        let accepting = !matches!(self.decode.health, GroupHealth::Broken(_));
        self.shared.healthy.store(accepting, Ordering::SeqCst);
        *self
            .shared
            .components
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = all;
    }
}
