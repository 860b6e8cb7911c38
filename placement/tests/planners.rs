//! Invariants every planner keeps on random loads.

use moeflow_placement::eval::{DeviceProfile, EvalOptions, Evaluator};
use moeflow_placement::planner::{
    by_name, expected_busiest, LoadNoise, PlanInput, DEFAULT_LOAD_NOISE, DEFAULT_MIN_WIN_SHARE,
    NAMES,
};
use moeflow_placement::{CostModel, PlacementPlan, PlanTarget};
use moeflow_trace::{CountsTrace, ModelShape, TraceItem};
use proptest::prelude::*;

/// Cost proportional to tokens (no memory floor), so modelled cost and token load agree.
fn linear() -> CostModel {
    let mut c = CostModel::default();
    c.profile.mem_bw = f64::INFINITY;
    c
}

fn input(load: Vec<Vec<f64>>, ranks: usize, redundant: usize) -> PlanInput {
    let e = load[0].len();
    PlanInput {
        target: PlanTarget {
            num_experts: e,
            moe_layers: (0..load.len()).collect(),
        },
        num_ranks: ranks,
        redundant_per_rank: redundant,
        ranks_per_node: None,
        num_groups: 1,
        top_k: 1,
        load,
        pairs: None,
        cost: linear(),
        // Judged on the loads exactly, so that the evaluator's maximum is the planners' own
        // criterion.
        load_noise: LoadNoise::NONE,
        min_win_share: DEFAULT_MIN_WIN_SHARE,
        model: None,
        source: Some("random".into()),
    }
}

/// Busiest rank's token load over all layers, replicas sharing their expert's load evenly,
/// measured by the evaluator.
fn max_load(plan: &PlacementPlan, input: &PlanInput) -> f64 {
    let shape = ModelShape {
        model: None,
        num_layers: input.load.len(),
        num_experts: input.target.num_experts,
        top_k: 1,
        moe_layers: input.target.moe_layers.clone(),
    };
    let mut ev =
        Evaluator::new(plan, &shape, DeviceProfile::h100(), EvalOptions::default()).unwrap();
    // Counts scaled to integers without losing the order of the random loads.
    let counts = input
        .load
        .iter()
        .map(|r| Some(r.iter().map(|&v| (v * 1000.0).round() as u64).collect()))
        .collect();
    ev.add(&TraceItem::Counts(CountsTrace {
        id: "load".into(),
        workload: None,
        phase: None,
        counts,
    }))
    .unwrap();
    ev.finish()
        .layers
        .iter()
        .map(|l| l.rank_load.iter().cloned().fold(0.0, f64::max))
        .fold(0.0, f64::max)
}

fn case() -> impl Strategy<Value = (Vec<Vec<f64>>, usize, usize)> {
    (
        prop::sample::select(vec![(8usize, 2usize), (8, 4), (16, 4), (16, 8), (32, 8)]),
        0usize..3,
        1usize..3,
    )
        .prop_flat_map(|((e, n), r, layers)| {
            // Skewed loads: mostly small, some hot, some idle.
            let cell = prop_oneof![3 => 0.0f64..10.0, 1 => 10.0f64..200.0, 1 => Just(0.0)];
            (
                prop::collection::vec(prop::collection::vec(cell, e), layers),
                Just(n),
                Just(r),
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn every_plan_hosts_every_expert_within_the_slot_budget((load, n, r) in case()) {
        let input = input(load, n, r);
        let e = input.target.num_experts;
        for &name in NAMES {
            let plan = by_name(name).unwrap().plan(&input).unwrap();
            plan.validate().unwrap();
            prop_assert_eq!(plan.slots_per_rank, Some(e / n + r));
            prop_assert_eq!(plan.algorithm.as_deref(), Some(name));
            for &l in &input.target.moe_layers {
                let ranks = plan.layer(l).unwrap();
                prop_assert!(ranks.iter().all(|x| x.len() == e / n + r), "{} layer {}", name, l);
                let total: usize = ranks.iter().map(Vec::len).sum();
                prop_assert_eq!(total, e + n * r);
                for x in 0..e as u32 {
                    prop_assert!(ranks.iter().any(|k| k.contains(&x)));
                }
            }
        }
    }

    #[test]
    fn load_aware_planners_are_never_worse_than_eplb((load, n, r) in case()) {
        let input = input(load, n, r);
        let eplb = max_load(&by_name("eplb").unwrap().plan(&input).unwrap(), &input);
        for name in ["prefill-aware", "traffic-aware"] {
            let m = max_load(&by_name(name).unwrap().plan(&input).unwrap(), &input);
            prop_assert!(m <= eplb * (1.0 + 1e-9) + 1e-6, "{} {} > eplb {}", name, m, eplb);
        }
    }

    #[test]
    fn under_noise_never_worse_than_eplb_in_either_mode((load, n, r) in case()) {
        // Two nodes and two router groups where the ranks allow, so that EPLB has a
        // hierarchical mode too.
        let nodes = (n >= 4).then_some(n / 2);
        let input = input(load, n, r)
            .with_load_noise(DEFAULT_LOAD_NOISE)
            .with_nodes(nodes)
            .with_groups(2);
        let crit = |i: &PlanInput, name: &str| {
            expected_busiest(&input, &by_name(name).unwrap().plan(i).unwrap()).unwrap()
        };
        let global = crit(&input.clone().with_nodes(None), "eplb");
        let auto = crit(&input, "eplb");
        for name in ["prefill-aware", "traffic-aware"] {
            let m = crit(&input, name);
            for l in 0..m.len() {
                let bound = global[l].min(auto[l]);
                prop_assert!(m[l] <= bound * (1.0 + 1e-9) + 1e-12, "{} layer {}: {} > {}", name, l, m[l], bound);
            }
        }
    }
}
