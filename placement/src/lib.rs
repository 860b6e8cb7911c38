//! Expert placement: which rank of a worker group hosts which routed experts.
//!
//! [`PlacementPlan`] is the one plan format (`moeflow.placement/v1`) that workers load,
//! planners write and evaluators replay; [`ReplicaSelector`] is the one rule that picks a
//! replica when an expert is hosted on several ranks. See `docs/placement-plan.md`.
//! [`planner`] turns expert loads into plans ([`planner::by_name`]); [`eval`] replays traces
//! against plans and compares them.

mod cost;
pub mod eval;
mod plan;
pub mod planner;
mod profile;
mod relabel;
mod replica;

pub use cost::{CostModel, ExpertShape};
pub use plan::{PlacementPlan, PlanError, PlanTarget, PLAN_FORMAT};
pub use relabel::{moved_experts, relabel};
pub use replica::ReplicaSelector;
