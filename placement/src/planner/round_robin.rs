//! The load-agnostic interleaved layout: expert `e` on rank `e mod N`.

use super::{assemble, layout, PlanInput, Planner, PlannerError};
use crate::PlacementPlan;

/// Expert `e` on rank `e mod N`, every layer alike, so that neighbouring expert ids (often
/// trained side by side and hot together) land on different ranks. Redundant slots are filled
/// like [`super::Contiguous`]'s: copies of the next ranks' experts, chosen without statistics.
#[derive(Debug, Clone, Copy, Default)]
pub struct RoundRobin;

impl Planner for RoundRobin {
    fn name(&self) -> &str {
        "round-robin"
    }

    fn plan(&self, input: &PlanInput) -> Result<PlacementPlan, PlannerError> {
        input.validate()?;
        let n = input.num_ranks;
        let mut ranks = vec![Vec::new(); n];
        for e in 0..input.target.num_experts {
            ranks[e % n].push(e as u32);
        }
        layout::fill_ring(&mut ranks, input.slots_per_rank());
        assemble(self.name(), input, |_| Ok(ranks.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::testutil::input;

    #[test]
    fn exact_layout_with_and_without_redundancy() {
        let i = input(vec![vec![1.0; 8]], 4, 0);
        let p = RoundRobin.plan(&i).unwrap();
        assert_eq!(
            p.layer(1).unwrap(),
            &[vec![0, 4], vec![1, 5], vec![2, 6], vec![3, 7]]
        );
        let i = input(vec![vec![1.0; 8]], 4, 1);
        let p = RoundRobin.plan(&i).unwrap();
        assert_eq!(
            p.layer(1).unwrap(),
            &[vec![0, 1, 4], vec![1, 2, 5], vec![2, 3, 6], vec![0, 3, 7]]
        );
        assert_eq!(p.slots_per_rank, Some(3));
    }
}
