//! The default rank-pick rule: the least loaded rank by KV blocks, then by running
//! sequences, then the lowest rank.

use super::pick::{RankBooks, RankPick};
use moeflow_api::GenerateRequest;

/// Spreads sequences by the memory they reserve, which is what limits admission.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LeastLoaded;

impl RankPick for LeastLoaded {
    fn choose(&self, _req: &GenerateRequest, candidates: &[RankBooks]) -> Option<usize> {
        candidates
            .iter()
            .min_by_key(|c| (c.blocks, c.running, c.rank))
            .map(|c| c.rank)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::tests::greedy;

    fn books(rank: usize, blocks: usize, running: usize) -> RankBooks {
        RankBooks {
            rank,
            blocks,
            running,
        }
    }

    #[test]
    fn fewest_blocks_then_fewest_running_then_lowest_rank() {
        let req = greedy("r", vec![1], 1);
        let pick = |c: &[RankBooks]| LeastLoaded.choose(&req, c);
        assert_eq!(pick(&[books(0, 5, 0), books(1, 4, 9)]), Some(1));
        assert_eq!(pick(&[books(0, 4, 2), books(1, 4, 1)]), Some(1));
        assert_eq!(pick(&[books(2, 4, 1), books(1, 4, 1)]), Some(1));
        assert_eq!(pick(&[]), None);
    }
}
