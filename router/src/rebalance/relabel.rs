//! Choosing, among plans of equal quality, the one that moves the fewest experts.
//!
//! Permuting a layer's rank lists changes neither its balance nor its cost (each MoE layer is
//! its own all-to-all), but it changes which experts must be loaded. For every layer this
//! assigns the new plan's rank lists to ranks so that they overlap the old plan's as much as
//! possible: greedily by largest overlap, kept only if it beats the identity.
//! [`moved_experts`] counts what a switch must load.

use moeflow_placement::PlacementPlan;

/// `new` with each layer's rank lists permuted to maximise overlap with `old`.
pub fn relabel(new: &PlacementPlan, old: &PlacementPlan) -> PlacementPlan {
    let mut out = new.clone();
    for (key, lists) in out.layers.iter_mut() {
        let Some(old_lists) = old.layers.get(key) else {
            continue;
        };
        let n = lists.len();
        if old_lists.len() != n {
            continue;
        }
        let overlap = |a: &[u32], b: &[u32]| a.iter().filter(|e| b.contains(e)).count();
        let mut pairs: Vec<(usize, usize, usize)> = (0..n)
            .flat_map(|i| (0..n).map(move |j| (i, j)))
            .map(|(i, j)| (overlap(&lists[i], &old_lists[j]), i, j))
            .collect();
        // Largest overlap first; ties keep the identity, then the lower ranks.
        pairs.sort_by(|a, b| {
            b.0.cmp(&a.0)
                .then((a.1 != a.2).cmp(&(b.1 != b.2)))
                .then(a.1.cmp(&b.1))
                .then(a.2.cmp(&b.2))
        });
        let mut to = vec![usize::MAX; n];
        let mut taken = vec![false; n];
        let mut greedy = 0;
        for (o, i, j) in pairs {
            if to[i] == usize::MAX && !taken[j] {
                to[i] = j;
                taken[j] = true;
                greedy += o;
            }
        }
        let identity: usize = (0..n).map(|i| overlap(&lists[i], &old_lists[i])).sum();
        if greedy > identity {
            let mut permuted = vec![Vec::new(); n];
            for (i, list) in lists.iter().enumerate() {
                permuted[to[i]] = list.clone();
            }
            *lists = permuted;
        }
    }
    out
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
    use crate::rebalance::{busiest_load, to_trace, ExpertLoads};
    use moeflow_placement::PlanTarget;
    use moeflow_trace::ModelShape;
    use proptest::prelude::*;

    fn plan(lists: Vec<Vec<u32>>, e: usize) -> PlacementPlan {
        let mut p = PlacementPlan::contiguous(
            &PlanTarget {
                num_experts: e,
                moe_layers: vec![0],
            },
            lists.len(),
        )
        .unwrap();
        p.layers.insert("0".into(), lists);
        p
    }

    #[test]
    fn a_rotated_plan_moves_nothing() {
        let old = plan(vec![vec![0, 1], vec![2, 3], vec![4, 5]], 6);
        let new = plan(vec![vec![4, 5], vec![0, 1], vec![2, 3]], 6);
        assert_eq!(moved_experts(&old, &new), 6);
        let r = relabel(&new, &old);
        assert_eq!(moved_experts(&old, &r), 0);
        assert_eq!(r, old);
    }

    proptest! {
        /// Relabelling keeps the cost and never moves more experts than the plan as given.
        #[test]
        fn keeps_cost_and_never_moves_more(
            seed in proptest::collection::vec(0u32..4, 8),
            perm in Just(()).prop_perturb(|_, mut rng| { let mut v = vec![0usize,1,2,3]; for i in (1..4).rev() { let j = (rng.next_u32() as usize) % (i + 1); v.swap(i, j); } v }),
            counts in proptest::collection::vec(0u64..100, 8),
        ) {
            // Random plan: expert e on rank seed[e], plus every rank non-empty by construction.
            let mut lists = vec![Vec::new(); 4];
            for (e, &r) in seed.iter().enumerate() { lists[r as usize].push(e as u32); }
            let old = plan(vec![vec![0, 1], vec![2, 3], vec![4, 5], vec![6, 7]], 8);
            let mut new_lists = vec![Vec::new(); 4];
            for (i, l) in lists.into_iter().enumerate() { new_lists[perm[i]] = l; }
            let new = plan(new_lists, 8);
            let loads: ExpertLoads = [(0, counts)].into_iter().collect();
            let shape = ModelShape { model: None, num_layers: 1, num_experts: 8, top_k: 1, moe_layers: vec![0] };
            let window = to_trace(&loads, &shape);
            let r = relabel(&new, &old);
            prop_assert_eq!(
                busiest_load(&r, &shape, &window).unwrap(),
                busiest_load(&new, &shape, &window).unwrap()
            );
            prop_assert!(moved_experts(&old, &r) <= moved_experts(&old, &new));
        }
    }
}
