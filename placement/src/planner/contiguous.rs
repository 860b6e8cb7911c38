//! The load-agnostic default: experts in blocks of `E/N` per rank.

use super::{assemble, layout, PlanInput, Planner, PlannerError};
use crate::PlacementPlan;

/// Experts `0..E/N` on rank 0, the next block on rank 1, and so on, every layer alike. With
/// redundant slots, rank `r` also hosts the first experts of ranks `r+1, r+2, ...`: a backup
/// copy chosen without statistics (what a deployment gets before any trace exists).
#[derive(Debug, Clone, Copy, Default)]
pub struct Contiguous;

impl Planner for Contiguous {
    fn name(&self) -> &str {
        "contiguous"
    }

    fn plan(&self, input: &PlanInput) -> Result<PlacementPlan, PlannerError> {
        input.validate()?;
        let mut ranks = layout::contiguous(input.target.num_experts, input.num_ranks);
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
        let i = input(vec![vec![1.0; 8], vec![2.0; 8]], 4, 0);
        let p = Contiguous.plan(&i).unwrap();
        assert_eq!(
            p.layer(2).unwrap(),
            &[vec![0, 1], vec![2, 3], vec![4, 5], vec![6, 7]]
        );
        assert_eq!(p.slots_per_rank, Some(2));
        assert_eq!(p.algorithm.as_deref(), Some("contiguous"));
        let i = input(vec![vec![1.0; 8]], 4, 1);
        let p = Contiguous.plan(&i).unwrap();
        assert_eq!(
            p.layer(1).unwrap(),
            &[vec![0, 1, 2], vec![2, 3, 4], vec![4, 5, 6], vec![0, 6, 7]]
        );
    }
}
