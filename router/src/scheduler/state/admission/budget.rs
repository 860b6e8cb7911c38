//! A group's KV and sequence budget per rank: what the scheduler has reserved on each rank,
//! which ranks can take a new sequence, and the policy that picks among them.

use super::least_loaded::LeastLoaded;
use super::pick::{RankBooks, RankPick};
use moeflow_api::GenerateRequest;

/// Reservations on every rank of one group.
pub(crate) struct Budget {
    ranks: Vec<RankBooks>,
    policy: Box<dyn RankPick>,
}

impl Budget {
    /// An empty budget for `world` ranks, picking ranks by [`LeastLoaded`].
    pub fn new(world: usize) -> Self {
        Self {
            ranks: (0..world)
                .map(|rank| RankBooks {
                    rank,
                    blocks: 0,
                    running: 0,
                })
                .collect(),
            policy: Box::new(LeastLoaded),
        }
    }

    /// The rank that gets `req` with `blocks` KV blocks, among the ranks with fewer than
    /// `max_running` sequences and room for the blocks within `max_blocks`.
    pub fn pick(
        &self,
        req: &GenerateRequest,
        blocks: usize,
        max_running: usize,
        max_blocks: usize,
    ) -> Option<usize> {
        let candidates: Vec<RankBooks> = self
            .ranks
            .iter()
            .filter(|r| r.running < max_running && r.blocks + blocks <= max_blocks)
            .copied()
            .collect();
        if candidates.is_empty() {
            return None;
        }
        // A policy may only choose a rank with room.
        self.policy
            .choose(req, &candidates)
            .filter(|r| candidates.iter().any(|c| c.rank == *r))
    }

    pub fn take(&mut self, rank: usize, blocks: usize) {
        if let Some(r) = self.ranks.get_mut(rank) {
            r.blocks += blocks;
            r.running += 1;
        }
    }

    pub fn give_back(&mut self, rank: usize, blocks: usize) {
        if let Some(r) = self.ranks.get_mut(rank) {
            r.blocks = r.blocks.saturating_sub(blocks);
            r.running = r.running.saturating_sub(1);
        }
    }

    /// The books of every rank, by rank.
    pub fn ranks(&self) -> &[RankBooks] {
        &self.ranks
    }

    /// Blocks reserved over the whole group.
    pub fn used_blocks(&self) -> usize {
        self.ranks.iter().map(|r| r.blocks).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::tests::greedy;

    struct Always(usize);

    impl RankPick for Always {
        fn choose(&self, _: &GenerateRequest, _: &[RankBooks]) -> Option<usize> {
            Some(self.0)
        }
    }

    fn req() -> GenerateRequest {
        greedy("r", vec![1], 1)
    }

    #[test]
    fn only_ranks_with_room_are_candidates() {
        let mut b = Budget::new(2);
        b.take(0, 7);
        assert_eq!(b.pick(&req(), 4, 8, 10), Some(1));
        b.take(1, 7);
        assert_eq!(
            b.pick(&req(), 4, 8, 10),
            None,
            "neither rank has 4 blocks left"
        );
        assert_eq!(b.pick(&req(), 3, 8, 10), Some(0), "exactly full is allowed");
        assert_eq!(b.pick(&req(), 3, 1, 10), None, "both ranks run their limit");
        b.give_back(0, 7);
        assert_eq!(b.pick(&req(), 4, 1, 10), Some(0));
        assert_eq!(b.used_blocks(), 7);
    }

    #[test]
    fn a_policy_cannot_place_beyond_the_budget() {
        let mut b = Budget::new(2);
        b.policy = Box::new(Always(0));
        b.take(0, 10);
        assert_eq!(b.pick(&req(), 1, 8, 10), None);
        b.policy = Box::new(Always(1));
        assert_eq!(b.pick(&req(), 1, 8, 10), Some(1));
    }
}
