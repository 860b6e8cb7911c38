//! Expert-parallel execution across the ranks of a worker group.
//!
//! [`EpDispatch`] implements [`crate::moe::MoeDispatch`] over a
//! [`moeflow_comm::Communicator`]: at every MoE layer each rank sends each token's hidden
//! state once to every rank that hosts one of its selected experts (dispatch), those ranks run
//! the experts and send back one weighted sum per token (combine), and the origin adds them up.
//! Which replica serves a selection follows the placement plan's rule
//! ([`moeflow_placement::ReplicaSelector`]). [`EpStats`] counts the data movement.

mod dispatch;
mod stats;
mod wire;

pub use dispatch::EpDispatch;
pub use stats::{EpStats, LayerStats};
