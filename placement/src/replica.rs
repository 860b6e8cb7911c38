//! Which replica serves a token's selection of an expert hosted on several ranks.

use std::collections::BTreeMap;

use crate::PlacementPlan;

/// Precomputed hosts of every (layer, expert) and the selection rule: the replica on the
/// token's own rank if there is one (no bytes cross ranks), otherwise the replica that has
/// received the fewest tokens from this rank in the current step (a balanced choice that each
/// rank makes on its own, without coordination).
#[derive(Debug, Clone)]
pub struct ReplicaSelector {
    /// layer → expert → ranks hosting it (ascending).
    hosts: BTreeMap<usize, Vec<Vec<usize>>>,
}

impl ReplicaSelector {
    pub fn new(plan: &PlacementPlan) -> Self {
        let mut hosts = BTreeMap::new();
        for (key, ranks) in &plan.layers {
            let Ok(layer) = key.parse::<usize>() else {
                continue;
            };
            let mut by_expert = vec![Vec::new(); plan.num_experts];
            for (r, experts) in ranks.iter().enumerate() {
                for &e in experts {
                    if let Some(v) = by_expert.get_mut(e as usize) {
                        v.push(r);
                    }
                }
            }
            hosts.insert(layer, by_expert);
        }
        Self { hosts }
    }

    /// Ranks hosting `expert` of `layer` (empty if none or unknown).
    pub fn hosts(&self, layer: usize, expert: u32) -> &[usize] {
        self.hosts
            .get(&layer)
            .and_then(|v| v.get(expert as usize))
            .map_or(&[], Vec::as_slice)
    }

    /// Picks the rank that computes `expert` for a token on `own_rank`. `load` counts the
    /// tokens this rank has sent to each rank in the current step and is updated.
    pub fn choose(
        &self,
        layer: usize,
        expert: u32,
        own_rank: usize,
        load: &mut [usize],
    ) -> Option<usize> {
        let hosts = self.hosts(layer, expert);
        let pick = if hosts.contains(&own_rank) {
            own_rank
        } else {
            *hosts
                .iter()
                .min_by_key(|&&r| (load.get(r).copied().unwrap_or(0), r))?
        };
        if let Some(l) = load.get_mut(pick) {
            *l += 1;
        }
        Some(pick)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PLAN_FORMAT;

    #[test]
    fn prefers_own_rank_then_balances() {
        let plan = PlacementPlan {
            format: PLAN_FORMAT.into(),
            num_ranks: 3,
            num_experts: 2,
            layers: [("0".to_string(), vec![vec![0, 1], vec![1], vec![1]])]
                .into_iter()
                .collect(),
            slots_per_rank: None,
            model: None,
            algorithm: None,
            source: None,
        };
        plan.validate().unwrap();
        let sel = ReplicaSelector::new(&plan);
        let mut load = vec![0; 3];
        assert_eq!(sel.choose(0, 1, 1, &mut load), Some(1));
        assert_eq!(sel.choose(0, 0, 2, &mut load), Some(0));
        // Expert 1 from rank 0 is local to rank 0.
        assert_eq!(sel.choose(0, 1, 0, &mut load), Some(0));
        let mut load = vec![0; 3];
        let picks: Vec<_> = (0..4)
            .map(|_| sel.choose(0, 1, 9, &mut load).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0]);
        assert_eq!(sel.choose(0, 5, 0, &mut load), None);
    }
}
