//! Failure handling: a failed step is terminal for every sequence of its group, each of
//! which gets exactly one [`TokenEvent::Error`]; the group is marked broken.
//!
//! A broken prefill group leaves decoding running (new prompts prefill on the decode group);
//! a broken decode group ends everything, waiting requests included, and new requests are
//! refused as unavailable.

use std::sync::atomic::Ordering;

use crate::group::GroupError;
use crate::scheduler::state::groups::GroupHealth;
use crate::scheduler::state::sequence::Role;
use crate::scheduler::state::SchedState;
use moeflow_api::TokenEvent;

impl SchedState {
    /// Ends one sequence with an error and frees it.
    pub(in crate::scheduler::state) fn fail_seq(&mut self, seq: u64, msg: &str) {
        if let Some(r) = self.running.get(&seq) {
            let _ = r.tx.try_send(TokenEvent::Error {
                message: msg.to_string(),
            });
        }
        self.release(seq);
    }

    /// Ends every waiting request with an error.
    pub(in crate::scheduler::state) fn fail_waiting(&mut self, msg: &str) {
        for w in self.waiting.drain(..) {
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            let _ = w.tx.try_send(TokenEvent::Error {
                message: msg.to_string(),
            });
        }
    }

    /// Marks the group `role` broken by `e` and ends what depended on it.
    pub(in crate::scheduler::state) fn group_failed(&mut self, role: Role, e: GroupError) {
        let name = self.group(role).name.clone();
        let msg = format!("worker group {name} failed: {e}");
        tracing::error!(%msg);
        let broken = GroupHealth::Broken(e.to_string());
        match (role, self.prefill.as_mut()) {
            (Role::Prefill, Some(p)) => p.health = broken,
            _ => self.decode.health = broken,
        }
        // Health first: a client that sees its error and then asks must see the group down.
        self.publish_health();
        let affected: Vec<u64> = self
            .running
            .iter()
            .filter(|(_, r)| r.at.0 == role || role == Role::Decode)
            .map(|(s, _)| *s)
            .collect();
        for seq in affected {
            self.fail_seq(seq, &msg);
        }
        if role == Role::Decode {
            self.fail_waiting(&msg);
        }
    }
}
