//! Choosing, among plans of equal quality, the one that moves the fewest experts.
//!
//! Permuting a layer's rank lists changes neither its balance nor its cost (each MoE layer is
//! its own all-to-all), but it changes which experts a live switch must load. For every layer
//! [`relabel`] assigns the new plan's rank lists to ranks so that they overlap the running
//! plan's as much as it can: greedily by largest overlap, kept only if it beats the identity.
//! With a topology, lists are permuted only among the ranks of one node, so a plan that put
//! an expert's replicas on different nodes, or kept a router group within a node, keeps that
//! property. [`moved_experts`] counts what a switch must load.

use crate::PlacementPlan;

/// `new` with each layer's rank lists permuted to maximise their overlap with `old`; with
/// `ranks_per_node`, only within each node (consecutive blocks of that many ranks; a count
/// that does not divide the ranks, or zero, means one node).
pub fn relabel(
    new: &PlacementPlan,
    old: &PlacementPlan,
    ranks_per_node: Option<usize>,
) -> PlacementPlan {
    let mut out = new.clone();
    for (key, lists) in out.layers.iter_mut() {
        let Some(old_lists) = old.layers.get(key) else {
            continue;
        };
        let n = lists.len();
        if old_lists.len() != n {
            continue;
        }
        let block = match ranks_per_node {
            Some(k) if k > 0 && n.is_multiple_of(k) => k,
            _ => n,
        };
        let mut permuted = Vec::with_capacity(n);
        for start in (0..n).step_by(block.max(1)) {
            let end = start + block;
            permuted.extend(match_block(&lists[start..end], &old_lists[start..end]));
        }
        *lists = permuted;
    }
    out
}

/// One block's new lists, reordered to overlap `old` most (or as given, if no reordering
/// beats the identity).
fn match_block(lists: &[Vec<u32>], old: &[Vec<u32>]) -> Vec<Vec<u32>> {
    let n = lists.len();
    let overlap = |a: &[u32], b: &[u32]| a.iter().filter(|e| b.contains(e)).count();
    let mut pairs: Vec<(usize, usize, usize)> = (0..n)
        .flat_map(|i| (0..n).map(move |j| (i, j)))
        .map(|(i, j)| (overlap(&lists[i], &old[j]), i, j))
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
    let identity: usize = (0..n).map(|i| overlap(&lists[i], &old[i])).sum();
    if greedy <= identity {
        return lists.to_vec();
    }
    let mut permuted = vec![Vec::new(); n];
    for (i, list) in lists.iter().enumerate() {
        permuted[to[i]] = list.clone();
    }
    permuted
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
    use crate::PlanTarget;
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

    fn sorted(p: &PlacementPlan) -> Vec<Vec<u32>> {
        let mut v: Vec<Vec<u32>> = p.layers["0"].clone();
        v.sort();
        v
    }

    #[test]
    fn a_rotated_plan_moves_nothing() {
        let old = plan(vec![vec![0, 1], vec![2, 3], vec![4, 5]], 6);
        let new = plan(vec![vec![4, 5], vec![0, 1], vec![2, 3]], 6);
        assert_eq!(moved_experts(&old, &new), 6);
        let r = relabel(&new, &old, None);
        assert_eq!(moved_experts(&old, &r), 0);
        assert_eq!(r, old);
    }

    #[test]
    fn lists_stay_on_their_node() {
        // Two nodes of two ranks; the new plan swapped the nodes' contents. Across nodes that
        // would move nothing, but it would change which node hosts what: not allowed.
        let old = plan(vec![vec![0, 1], vec![2, 3], vec![4, 5], vec![6, 7]], 8);
        let new = plan(vec![vec![4, 5], vec![6, 7], vec![0, 1], vec![2, 3]], 8);
        assert_eq!(moved_experts(&old, &relabel(&new, &old, None)), 0);
        assert_eq!(relabel(&new, &old, Some(2)), new);
        // Within a node it still reorders.
        let new = plan(vec![vec![2, 3], vec![0, 1], vec![6, 7], vec![4, 5]], 8);
        assert_eq!(relabel(&new, &old, Some(2)), old);
    }

    proptest! {
        /// Relabelling only permutes a layer's lists (so balance and cost are unchanged), keeps
        /// each list on its node, and never moves more experts than the plan as given.
        #[test]
        fn permutes_within_nodes_and_never_moves_more(
            seed in proptest::collection::vec(0u32..4, 8),
            perm in Just(()).prop_perturb(|_, mut rng| {
                let mut v = vec![0usize, 1, 2, 3];
                for i in (1..4).rev() {
                    let j = (rng.next_u32() as usize) % (i + 1);
                    v.swap(i, j);
                }
                v
            }),
            per_node in prop_oneof![Just(None), Just(Some(1usize)), Just(Some(2usize)), Just(Some(3usize))],
        ) {
            let mut lists = vec![Vec::new(); 4];
            for (e, &r) in seed.iter().enumerate() {
                lists[r as usize].push(e as u32);
            }
            let old = plan(vec![vec![0, 1], vec![2, 3], vec![4, 5], vec![6, 7]], 8);
            let mut new_lists = vec![Vec::new(); 4];
            for (i, l) in lists.into_iter().enumerate() {
                new_lists[perm[i]] = l;
            }
            let new = plan(new_lists, 8);
            let r = relabel(&new, &old, per_node);
            prop_assert_eq!(sorted(&r), sorted(&new));
            prop_assert!(moved_experts(&old, &r) <= moved_experts(&old, &new));
            if let Some(k) = per_node.filter(|k| 4 % k == 0) {
                for node in 0..4 / k {
                    let mut a = r.layers["0"][node * k..(node + 1) * k].to_vec();
                    let mut b = new.layers["0"][node * k..(node + 1) * k].to_vec();
                    a.sort();
                    b.sort();
                    prop_assert_eq!(a, b, "node {} holds other lists", node);
                }
            }
        }
    }
}
