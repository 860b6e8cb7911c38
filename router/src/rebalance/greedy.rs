//! An interim planner for the rebalancer: longest-processing-time-first balance.
//!
//! The placement crate's planners (eplb, prefill-aware, traffic-aware) replace it through
//! [`super::Planner`] once they land; this one exists so that `--rebalance-every` works on its
//! own. Per layer, experts go in descending load to the least-loaded rank that still has a
//! free slot (`ceil(E / N)` slots per rank), no replicas.

use moeflow_placement::PlacementPlan;

use super::{ExpertLoads, Planner};

/// Longest-processing-time-first balance with equal slots per rank.
#[derive(Debug, Clone, Copy, Default)]
pub struct GreedyBalance;

impl Planner for GreedyBalance {
    fn name(&self) -> &str {
        "greedy-balance"
    }

    fn plan(&self, loads: &ExpertLoads, current: &PlacementPlan) -> Result<PlacementPlan, String> {
        let n = current.num_ranks;
        let e = current.num_experts;
        if n == 0 {
            return Err("the current plan has no ranks".into());
        }
        let slots = e.div_ceil(n);
        let mut out = current.clone();
        out.algorithm = Some(self.name().to_string());
        out.slots_per_rank = None;
        for (key, lists) in out.layers.iter_mut() {
            let layer = key
                .parse::<usize>()
                .map_err(|_| format!("layer key `{key}` is not a layer index"))?;
            let counts = loads.get(&layer);
            let load_of = |x: usize| counts.and_then(|c| c.get(x)).copied().unwrap_or(0);
            let mut order: Vec<usize> = (0..e).collect();
            order.sort_by(|&a, &b| load_of(b).cmp(&load_of(a)).then(a.cmp(&b)));
            let mut rank_load = vec![0u64; n];
            let mut new_lists = vec![Vec::new(); n];
            for x in order {
                let r = (0..n)
                    .filter(|&r| new_lists[r].len() < slots)
                    .min_by_key(|&r| (rank_load[r], new_lists[r].len(), r))
                    .ok_or("no free slot (cannot happen with ceil(E/N) slots)")?;
                rank_load[r] += load_of(x);
                new_lists[r].push(x as u32);
            }
            for l in &mut new_lists {
                l.sort_unstable();
            }
            *lists = new_lists;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moeflow_placement::PlanTarget;

    #[test]
    fn spreads_hot_experts() {
        let cur = PlacementPlan::contiguous(
            &PlanTarget {
                num_experts: 6,
                moe_layers: vec![2],
            },
            3,
        )
        .unwrap();
        let loads: ExpertLoads = [(2, vec![90, 80, 70, 1, 1, 1])].into_iter().collect();
        let p = GreedyBalance.plan(&loads, &cur).unwrap();
        p.validate().unwrap();
        let lists = p.layer(2).unwrap();
        for hot in 0..3u32 {
            let r = lists.iter().position(|l| l.contains(&hot)).unwrap();
            assert_eq!(lists[r].iter().filter(|&&e| e < 3).count(), 1, "{lists:?}");
        }
    }
}
