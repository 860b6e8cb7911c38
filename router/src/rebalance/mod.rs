//! Periodic re-placement of the decode group (`moeflow serve --rebalance-every`).
//!
//! Every period the rebalancer reads how many tokens each (layer, expert) computed in the
//! last window (the ranks' `EpStats`, summed over ranks), turns the window into the trace
//! model's counts ([`window::to_trace`]), asks one of the placement crate's planners
//! ([`moeflow_placement::planner::by_name`]) for a plan with the current plan's slots per rank,
//! relabels the new plan's ranks so that it moves as few experts as possible
//! ([`moeflow_placement::relabel`]),
//! and applies it only when the modelled gain (the placement crate's evaluator replaying the
//! window: per layer the busiest rank's load, summed over layers, see [`gain`]) is above a
//! threshold.

mod gain;
mod window;

pub use gain::{busiest_load, modelled_gain};
use moeflow_placement::{moved_experts, relabel};
pub use window::{read_counts, to_trace, ExpertLoads};

use std::sync::Arc;
use std::time::Duration;

use moeflow_placement::eval::EvalError;
use moeflow_placement::planner::{PlanInput, Planner, PlannerError};
use moeflow_placement::{PlacementPlan, PlanError, PlanTarget};
use moeflow_trace::{LoadSummary, ModelShape, TraceModelError};

use crate::group::WorkerGroup;
use crate::scheduler::Scheduler;

/// When to re-plan and when a new plan is worth moving experts for.
#[derive(Debug, Clone)]
pub struct RebalanceConfig {
    pub every: Duration,
    /// Apply only when `old_cost / new_cost - 1` exceeds this (0.05 = 5%).
    pub threshold: f64,
    /// The group to rebalance (`decode`).
    pub group: String,
    /// Experts each token selects (the model's top-k): the planners' cost model scales counts
    /// to per-step tokens with it.
    pub top_k: usize,
}

/// Why a window could not be planned for. Names the plan, the window or the planner.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RebalanceError {
    #[error("the group's current plan: {0}")]
    Plan(#[from] PlanError),
    #[error("the window's expert loads do not fit the current plan's model: {0}")]
    Window(#[from] TraceModelError),
    #[error("planning: {0}")]
    Planner(#[from] PlannerError),
    #[error("modelling the gain: {0}")]
    Eval(#[from] EvalError),
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

/// The model the current plan is for: its MoE layers and experts, and `top_k`.
fn shape_of(current: &PlacementPlan, top_k: usize) -> Result<ModelShape, PlanError> {
    let moe_layers = current.layer_indices()?;
    Ok(ModelShape {
        model: current.model.clone(),
        num_layers: moe_layers.last().map_or(0, |&l| l + 1),
        num_experts: current.num_experts,
        top_k,
        moe_layers,
    })
}

/// Redundant slots per rank of the current plan (its `slots_per_rank`, else its fullest
/// rank, minus `E/N`), so that the new plan fits the memory the ranks already use.
fn redundant_slots(current: &PlacementPlan) -> usize {
    let slots = current.slots_per_rank.unwrap_or_else(|| {
        current
            .layers
            .values()
            .flat_map(|ranks| ranks.iter().map(Vec::len))
            .max()
            .unwrap_or(0)
    });
    slots.saturating_sub(current.num_experts / current.num_ranks.max(1))
}

/// Plans for the `window` loads with `planner` (same ranks and slots per rank as `current`;
/// the planners need the expert count to divide by the rank count), relabels for the fewest
/// moves and compares with `current` by the evaluator's busiest-rank load.
pub fn decide(
    planner: &dyn Planner,
    window: &ExpertLoads,
    current: &PlacementPlan,
    top_k: usize,
    threshold: f64,
) -> Result<Decision, RebalanceError> {
    if window.values().all(|v| v.iter().all(|&c| c == 0)) {
        return Ok(Decision::Idle);
    }
    let shape = shape_of(current, top_k)?;
    let item = window::to_trace(window, &shape);
    let mut load = LoadSummary::new(shape.clone(), false);
    load.add(&item)?;
    let target = PlanTarget {
        num_experts: shape.num_experts,
        moe_layers: shape.moe_layers.clone(),
    };
    let input = PlanInput::from_load(
        target,
        &load.unphased,
        current.num_ranks,
        redundant_slots(current),
    )?
    .with_top_k(top_k.max(1))
    .with_source(current.model.clone(), Some("rebalance window".into()));
    let candidate = planner.plan(&input)?;
    // The window planner gets no topology, so any permutation of ranks is as good.
    let plan = relabel(&candidate, current, None);
    let gain = modelled_gain(current, &plan, &shape, &item)?;
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
            match decide(
                planner.as_ref(),
                &window,
                &current,
                cfg.top_k,
                cfg.threshold,
            ) {
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
    use moeflow_placement::planner::{by_name, NAMES};

    fn contiguous(e: usize, n: usize) -> PlacementPlan {
        let target = PlanTarget {
            num_experts: e,
            moe_layers: vec![0],
        };
        PlacementPlan::contiguous(&target, n).unwrap()
    }

    #[test]
    fn applies_only_above_the_threshold() {
        let eplb = by_name("eplb").unwrap();
        let current = contiguous(4, 2);
        // Experts 0 and 1 are hot and both on rank 0.
        let skewed: ExpertLoads = [(0, vec![50, 50, 1, 1])].into_iter().collect();
        let d = decide(eplb.as_ref(), &skewed, &current, 2, 0.05).unwrap();
        let Decision::Apply { plan, gain, moved } = d else {
            panic!("{d:?}")
        };
        assert!(gain > 0.9, "{gain}");
        assert_eq!(plan.algorithm.as_deref(), Some("eplb"));
        // One hot expert stays on rank 0; moving one expert each way is the minimum.
        assert_eq!(moved, 2);
        assert!(plan.hosts(0, 0, 0) || plan.hosts(0, 0, 1));
        let even: ExpertLoads = [(0, vec![10, 10, 10, 10])].into_iter().collect();
        assert!(matches!(
            decide(eplb.as_ref(), &even, &current, 2, 0.05).unwrap(),
            Decision::Keep { .. }
        ));
        let idle: ExpertLoads = [(0, vec![0; 4])].into_iter().collect();
        assert_eq!(
            decide(eplb.as_ref(), &idle, &current, 2, 0.05).unwrap(),
            Decision::Idle
        );
    }

    #[test]
    fn every_planner_keeps_the_slots_of_the_current_plan() {
        // 8 experts over 2 ranks with one redundant slot each: 5 experts per rank.
        let mut current = contiguous(8, 2);
        current.slots_per_rank = Some(5);
        current
            .layers
            .insert("0".into(), vec![vec![0, 1, 2, 3, 4], vec![3, 4, 5, 6, 7]]);
        current.validate().unwrap();
        let skewed: ExpertLoads = [(0, vec![90, 80, 70, 60, 1, 1, 1, 1])]
            .into_iter()
            .collect();
        for &name in NAMES {
            let planner = by_name(name).unwrap();
            let d = decide(planner.as_ref(), &skewed, &current, 2, -1.0).unwrap();
            let Decision::Apply { plan, .. } = d else {
                panic!("{name}: {d:?}")
            };
            plan.validate().unwrap();
            for ranks in plan.layers.values() {
                assert!(ranks.iter().all(|r| r.len() == 5), "{name}: {ranks:?}");
            }
        }
    }

    #[test]
    fn bad_windows_and_plans_are_named() {
        let eplb = by_name("eplb").unwrap();
        let wide: ExpertLoads = [(0, vec![1; 5])].into_iter().collect();
        let err = decide(eplb.as_ref(), &wide, &contiguous(4, 2), 2, 0.05).unwrap_err();
        assert!(matches!(
            err,
            RebalanceError::Window(TraceModelError::CountsWidth { got: 5, .. })
        ));
        let other_layer: ExpertLoads = [(3, vec![1; 4])].into_iter().collect();
        let err = decide(eplb.as_ref(), &other_layer, &contiguous(4, 2), 2, 0.05).unwrap_err();
        assert!(err.to_string().contains("layer 3"), "{err}");
        // 6 experts over 4 ranks: the planners refuse, naming both counts.
        let odd: ExpertLoads = [(0, vec![9, 1, 1, 1, 1, 1])].into_iter().collect();
        let err = decide(eplb.as_ref(), &odd, &contiguous(6, 4), 2, 0.05).unwrap_err();
        assert!(matches!(
            err,
            RebalanceError::Planner(PlannerError::Indivisible {
                experts: 6,
                ranks: 4
            })
        ));
    }
}
