//! Periodic re-placement of the decode group (`moeflow serve --rebalance-every`).
//!
//! Every period the rebalancer reads how many tokens each (layer, expert) computed in the
//! last window (the ranks' `EpStats`, summed over ranks), asks a [`Planner`] for a plan for
//! that load, relabels the new plan's ranks so that it moves as few experts as possible
//! ([`relabel`]), and applies it only when the modelled gain ([`cost`]: per layer the busiest
//! rank's load, summed over layers) is above a threshold.

mod cost;
mod greedy;
mod relabel;
mod window;

pub use cost::{cost, modelled_gain, moved_experts};
pub use greedy::GreedyBalance;
pub use relabel::relabel;
pub use window::{read_counts, ExpertLoads};

use std::sync::Arc;
use std::time::Duration;

use moeflow_placement::PlacementPlan;

use crate::group::WorkerGroup;
use crate::scheduler::Scheduler;

/// Makes a plan for an observed load. The placement crate's planners implement this shape
/// (`moeflow_placement::planner::by_name`) once they land; until then callers pass their own.
pub trait Planner: Send + Sync {
    fn name(&self) -> &str;
    /// A plan with `current.num_ranks` ranks for the layers and experts of `current`.
    fn plan(&self, loads: &ExpertLoads, current: &PlacementPlan) -> Result<PlacementPlan, String>;
}

/// When to re-plan and when a new plan is worth moving experts for.
#[derive(Debug, Clone)]
pub struct RebalanceConfig {
    pub every: Duration,
    /// Apply only when `old_cost / new_cost - 1` exceeds this (0.05 = 5%).
    pub threshold: f64,
    /// The group to rebalance (`decode`).
    pub group: String,
}

/// What one look at the window decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// No tokens in the window.
    Idle,
    /// The gain is at or under the threshold.
    Keep { gain: f64 },
    /// Worth it: the relabelled plan, its gain and how many experts it moves.
    Apply {
        plan: PlacementPlan,
        gain: f64,
        moved: usize,
    },
}

/// Plans for `loads`, relabels for the fewest moves and compares with `current`.
pub fn decide(
    planner: &dyn Planner,
    loads: &ExpertLoads,
    current: &PlacementPlan,
    threshold: f64,
) -> Result<Decision, String> {
    if loads.values().all(|v| v.iter().all(|&c| c == 0)) {
        return Ok(Decision::Idle);
    }
    let candidate = planner.plan(loads, current)?;
    candidate
        .validate()
        .map_err(|e| format!("planner {}: {e}", planner.name()))?;
    let plan = relabel(&candidate, current);
    let gain = modelled_gain(current, &plan, loads);
    if gain <= threshold {
        return Ok(Decision::Keep { gain });
    }
    Ok(Decision::Apply {
        moved: moved_experts(current, &plan),
        plan,
        gain,
    })
}

/// Runs the rebalancer until the returned task is aborted.
pub fn spawn_rebalancer(
    scheduler: Arc<Scheduler>,
    group: WorkerGroup,
    planner: Arc<dyn Planner>,
    cfg: RebalanceConfig,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(cfg.every);
        tick.tick().await;
        let mut prev = read_counts(&group).await.unwrap_or_default();
        loop {
            tick.tick().await;
            let now = match read_counts(&group).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "rebalance: cannot read expert loads");
                    continue;
                }
            };
            let window = window::difference(&now, &prev);
            prev = now;
            let current = match scheduler.plan(&cfg.group).await.map(|p| {
                serde_json::from_str::<PlacementPlan>(&p.plan_json).map_err(|e| e.to_string())
            }) {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "rebalance: the group's plan is unreadable");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "rebalance: cannot read the group's plan");
                    continue;
                }
            };
            match decide(planner.as_ref(), &window, &current, cfg.threshold) {
                Ok(Decision::Idle) => {}
                Ok(Decision::Keep { gain }) => {
                    tracing::info!(
                        gain,
                        threshold = cfg.threshold,
                        "rebalance: keeping the plan"
                    )
                }
                Ok(Decision::Apply { plan, gain, moved }) => {
                    tracing::info!(
                        gain,
                        moved,
                        planner = planner.name(),
                        "rebalance: applying a new plan"
                    );
                    match scheduler
                        .apply_plan(&cfg.group, plan.to_json_pretty())
                        .await
                    {
                        Ok(a) => tracing::info!(
                            bytes_loaded = a.bytes_loaded,
                            prepare_s = a.prepare_seconds,
                            commit_s = a.commit_seconds,
                            "rebalance: applied"
                        ),
                        Err(e) => tracing::warn!(error = %e, "rebalance: not applied"),
                    }
                }
                Err(e) => tracing::warn!(error = %e, "rebalance: planning failed"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use moeflow_placement::PlanTarget;

    #[test]
    fn applies_only_above_the_threshold() {
        let target = PlanTarget {
            num_experts: 4,
            moe_layers: vec![0],
        };
        let current = PlacementPlan::contiguous(&target, 2).unwrap();
        // Experts 0 and 1 are hot and both on rank 0.
        let skewed: ExpertLoads = [(0, vec![50, 50, 1, 1])].into_iter().collect();
        let d = decide(&GreedyBalance, &skewed, &current, 0.05).unwrap();
        let Decision::Apply { plan, gain, moved } = d else {
            panic!("{d:?}")
        };
        assert!(gain > 0.9, "{gain}");
        // One hot expert stays on rank 0; moving one expert each way is the minimum.
        assert_eq!(moved, 2);
        assert!(plan.hosts(0, 0, 0) || plan.hosts(0, 0, 1));
        let even: ExpertLoads = [(0, vec![10, 10, 10, 10])].into_iter().collect();
        assert!(matches!(
            decide(&GreedyBalance, &even, &current, 0.05).unwrap(),
            Decision::Keep { .. }
        ));
        let idle: ExpertLoads = [(0, vec![0; 4])].into_iter().collect();
        assert_eq!(
            decide(&GreedyBalance, &idle, &current, 0.05).unwrap(),
            Decision::Idle
        );
    }
}
