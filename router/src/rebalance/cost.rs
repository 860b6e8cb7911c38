//! The load model a re-placement is judged by.
//!
//! A MoE layer's step waits for its busiest rank, so the modelled cost of a plan for a load is,
//! summed over layers, the largest per-rank token count; an expert hosted on several ranks
//! splits its tokens evenly over them (what the replica rule tends to for tokens that come
//! from ranks not hosting the expert).

use moeflow_placement::PlacementPlan;

use super::ExpertLoads;

/// Sum over layers of the busiest rank's modelled load.
pub fn cost(plan: &PlacementPlan, loads: &ExpertLoads) -> f64 {
    let mut total = 0.0;
    for (&layer, counts) in loads {
        let Some(ranks) = plan.layer(layer) else {
            continue;
        };
        let mut replicas = vec![0usize; counts.len()];
        for experts in ranks {
            for &e in experts {
                if let Some(r) = replicas.get_mut(e as usize) {
                    *r += 1;
                }
            }
        }
        let busiest = ranks
            .iter()
            .map(|experts| {
                experts
                    .iter()
                    .filter_map(|&e| {
                        let c = *counts.get(e as usize)? as f64;
                        Some(c / replicas[e as usize].max(1) as f64)
                    })
                    .sum::<f64>()
            })
            .fold(0.0, f64::max);
        total += busiest;
    }
    total
}

/// `cost(old) / cost(new) - 1`: 0.25 means the new plan's modelled steps are 25% faster.
pub fn modelled_gain(old: &PlacementPlan, new: &PlacementPlan, loads: &ExpertLoads) -> f64 {
    let (o, n) = (cost(old, loads), cost(new, loads));
    if n <= 0.0 {
        return 0.0;
    }
    o / n - 1.0
}

/// (layer, rank, expert) placements of `new` that `old` does not have: experts some rank must
/// load.
pub fn moved_experts(old: &PlacementPlan, new: &PlacementPlan) -> usize {
    new.layers
        .iter()
        .map(|(key, ranks)| {
            let layer = key.parse::<usize>().unwrap_or(usize::MAX);
            ranks
                .iter()
                .enumerate()
                .map(|(r, experts)| experts.iter().filter(|&&e| !old.hosts(layer, r, e)).count())
                .sum::<usize>()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use moeflow_placement::PlanTarget;

    #[test]
    fn busiest_rank_with_replicas_split() {
        let t = PlanTarget {
            num_experts: 4,
            moe_layers: vec![1],
        };
        let mut p = PlacementPlan::contiguous(&t, 2).unwrap();
        let loads: ExpertLoads = [(1, vec![8, 0, 2, 2])].into_iter().collect();
        assert_eq!(cost(&p, &loads), 8.0);
        p.layers.insert("1".into(), vec![vec![0, 1], vec![0, 2, 3]]);
        // Expert 0 is split 4/4: rank 1 has 4 + 2 + 2.
        assert_eq!(cost(&p, &loads), 8.0);
        p.layers.insert("1".into(), vec![vec![0, 1, 2], vec![0, 3]]);
        assert_eq!(cost(&p, &loads), 6.0);
        let c = PlacementPlan::contiguous(&t, 2).unwrap();
        assert!((modelled_gain(&c, &p, &loads) - (8.0 / 6.0 - 1.0)).abs() < 1e-12);
        assert_eq!(moved_experts(&c, &p), 2);
        assert_eq!(moved_experts(&c, &c), 0);
    }
}
