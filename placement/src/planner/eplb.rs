//! DeepSeek's expert-parallelism load balancer (EPLB), planned from token counts.

use super::{assemble, layout, PlanInput, Planner, PlannerError};
use crate::PlacementPlan;

/// DeepSeek's EPLB, reimplemented from its published description and semantics.
///
/// Hierarchical mode, when `ranks_per_node` is given and the expert groups divide evenly
/// over the nodes: (1) pack the expert groups onto nodes by balanced packing of group loads;
/// (2) within each node, give the redundant slots one at a time to the expert with the
/// highest load per copy; (3) pack the copies (each carrying `load / copies`) onto the
/// node's ranks by balanced packing. Otherwise global mode: the same with one group and one
/// node. Balanced packing puts items heaviest first on the lightest pack that has room, every
/// pack taking exactly the same number of items.
///
/// Two deviations keep its output a valid `moeflow.placement/v1` plan: an expert never gets
/// more copies than there are ranks to hold them, and two copies of one expert never share a
/// rank (EPLB's packing allows that; here the copy goes to the lightest rank without one, see
/// [`layout::pack`]). When a node has too few ranks to hold its share of redundant copies as
/// distinct experts, the global mode is used.
#[derive(Debug, Clone, Copy, Default)]
pub struct Eplb;

impl Planner for Eplb {
    fn name(&self) -> &str {
        "eplb"
    }

    fn plan(&self, input: &PlanInput) -> Result<PlacementPlan, PlannerError> {
        input.validate()?;
        assemble(self.name(), input, |i| {
            Ok(eplb_layer(input, &input.load[i]))
        })
    }
}

/// One layer's EPLB layout for `weight` (per expert), in the mode EPLB itself picks.
pub(crate) fn eplb_layer(input: &PlanInput, weight: &[f64]) -> Vec<Vec<u32>> {
    eplb_layout(input, weight, hierarchical(input))
}

/// EPLB's layouts at this slot budget: the global mode, and the hierarchical one where it
/// applies (the load-aware planners take both as candidates, so that they are never worse
/// than EPLB in either mode by their own criterion).
pub(crate) fn eplb_candidates(input: &PlanInput, weight: &[f64]) -> Vec<Vec<Vec<u32>>> {
    let mut c = vec![eplb_layout(input, weight, false)];
    if hierarchical(input) {
        c.push(eplb_layout(input, weight, true));
    }
    c
}

/// Whether EPLB runs hierarchically on `input`: several nodes, the expert groups divide
/// over them, and each node's redundant copies fit as distinct experts on its ranks.
fn hierarchical(input: &PlanInput) -> bool {
    let (e, n) = (input.target.num_experts, input.num_ranks);
    let nodes = input.num_nodes();
    let rpn = n / nodes;
    nodes > 1
        && input.num_groups.is_multiple_of(nodes)
        && input.redundant_per_rank * rpn <= (rpn - 1) * (e / nodes)
}

/// One layer's EPLB layout in the given mode (`hierarchical` only where it applies).
fn eplb_layout(input: &PlanInput, weight: &[f64], hierarchical: bool) -> Vec<Vec<u32>> {
    let (e, n, slots) = (
        input.target.num_experts,
        input.num_ranks,
        input.slots_per_rank(),
    );
    let nodes = input.num_nodes();
    let rpn = n / nodes;
    let (groups, nodes, rpn) = if hierarchical {
        (input.num_groups, nodes, rpn)
    } else {
        (1, 1, n)
    };
    let group_size = e / groups;
    let group_items: Vec<(u32, f64)> = (0..groups)
        .map(|g| {
            let w = weight[g * group_size..(g + 1) * group_size].iter().sum();
            (g as u32, w)
        })
        .collect();
    let node_groups = layout::pack(&group_items, nodes, groups / nodes);
    let mut ranks = Vec::with_capacity(n);
    for groups_here in node_groups {
        let experts: Vec<u32> = groups_here
            .iter()
            .flat_map(|&g| {
                let g = g as usize;
                (g * group_size) as u32..((g + 1) * group_size) as u32
            })
            .collect();
        let local: Vec<f64> = experts.iter().map(|&x| weight[x as usize]).collect();
        let copies = replicate(&local, slots * rpn, rpn);
        let items: Vec<(u32, f64)> = experts
            .iter()
            .zip(&local)
            .zip(&copies)
            .flat_map(|((&x, &w), &k)| std::iter::repeat_n((x, w / k as f64), k))
            .collect();
        ranks.extend(layout::pack(&items, rpn, slots));
    }
    ranks
}

/// Copies per expert after handing out `num_copies - len` redundant copies one at a time to
/// the expert with the highest load per copy (ties to the lower index), at most `max_copies`
/// each.
pub(crate) fn replicate(weight: &[f64], num_copies: usize, max_copies: usize) -> Vec<usize> {
    let mut copies = vec![1usize; weight.len()];
    for _ in weight.len()..num_copies {
        let best = (0..weight.len())
            .filter(|&x| copies[x] < max_copies)
            .max_by(|&a, &b| {
                (weight[a] / copies[a] as f64)
                    .total_cmp(&(weight[b] / copies[b] as f64))
                    .then(b.cmp(&a))
            });
        match best {
            Some(x) => copies[x] += 1,
            None => break,
        }
    }
    copies
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::testutil::input;

    #[test]
    fn replicate_gives_copies_to_the_highest_load_per_copy() {
        assert_eq!(replicate(&[10.0, 6.0, 3.0, 1.0], 6, 4), vec![2, 2, 1, 1]);
        assert_eq!(replicate(&[10.0, 1.0], 5, 2), vec![2, 2]);
    }

    #[test]
    fn global_example_with_one_redundant_slot() {
        // Copies: e0 x2 (5 each), e1 x2 (3 each); packing 5,5,3,3,3,1 into 2 x 3.
        let i = input(vec![vec![10.0, 6.0, 3.0, 1.0]], 2, 1);
        let p = Eplb.plan(&i).unwrap();
        assert_eq!(p.layer(1).unwrap(), &[vec![0, 1, 2], vec![0, 1, 3]]);
        assert_eq!(p.slots_per_rank, Some(3));
    }

    #[test]
    fn hierarchical_packs_groups_to_nodes_first() {
        let w = vec![8.0, 1.0, 7.0, 1.0, 6.0, 1.0, 5.0, 1.0];
        let global = Eplb.plan(&input(vec![w.clone()], 4, 0)).unwrap();
        assert_eq!(
            global.layer(1).unwrap(),
            &[vec![0, 7], vec![2, 5], vec![3, 4], vec![1, 6]]
        );
        // Groups (pairs) 9, 8, 7, 6 -> node 0 holds groups 0 and 3, node 1 groups 1 and 2.
        let h = input(vec![w], 4, 0).with_nodes(Some(2)).with_groups(4);
        let p = Eplb.plan(&h).unwrap();
        assert_eq!(
            p.layer(1).unwrap(),
            &[vec![0, 7], vec![1, 6], vec![2, 5], vec![3, 4]]
        );
        // Groups that do not divide over the nodes fall back to the global mode.
        let g = input(vec![vec![8.0, 1.0, 7.0, 1.0, 6.0, 1.0, 5.0, 1.0]], 4, 0)
            .with_nodes(Some(2))
            .with_groups(1);
        assert_eq!(Eplb.plan(&g).unwrap().layers, global.layers);
    }
}
