//! Data-movement accounting of expert-parallel execution, per MoE layer, seen from one rank.

use std::collections::BTreeMap;

/// Counters of one MoE layer on one rank, accumulated over steps.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct LayerStats {
    /// Token selections this rank computed, per expert id.
    pub tokens_per_expert: Vec<u64>,
    /// Activation bytes this rank sent to each rank (dispatch and combine), by rank.
    pub bytes_sent: Vec<u64>,
    /// Activation bytes this rank received from each rank, by rank.
    pub bytes_received: Vec<u64>,
    /// `dest_histogram[d]`: tokens of this rank whose selections went to `d` distinct ranks.
    pub dest_histogram: Vec<u64>,
    /// Selections of this rank's tokens served on another rank.
    pub remote_selections: u64,
    /// All selections of this rank's tokens.
    pub selections: u64,
    /// Times this layer ran (one per step).
    pub calls: u64,
    /// Seconds this rank spent computing its hosted experts (the part a placement balances:
    /// the busiest rank's share decides how long the others wait in the combine).
    pub compute_seconds: f64,
    /// Seconds of the whole routed part (dispatch, expert compute, combine) on this rank.
    pub routed_seconds: f64,
}

impl LayerStats {
    fn new(num_experts: usize, world: usize) -> Self {
        Self {
            tokens_per_expert: vec![0; num_experts],
            bytes_sent: vec![0; world],
            bytes_received: vec![0; world],
            dest_histogram: vec![0; world + 1],
            remote_selections: 0,
            selections: 0,
            calls: 0,
            compute_seconds: 0.0,
            routed_seconds: 0.0,
        }
    }

    /// Bytes sent to other ranks (the rank's own share never crosses a wire).
    pub fn bytes_sent_remote(&self, rank: usize) -> u64 {
        self.bytes_sent
            .iter()
            .enumerate()
            .filter(|(r, _)| *r != rank)
            .map(|(_, b)| b)
            .sum()
    }

    /// Mean number of distinct destination ranks per token.
    pub fn mean_destinations(&self) -> f64 {
        let tokens: u64 = self.dest_histogram.iter().sum();
        if tokens == 0 {
            return 0.0;
        }
        let sum: u64 = self
            .dest_histogram
            .iter()
            .enumerate()
            .map(|(d, n)| d as u64 * n)
            .sum();
        sum as f64 / tokens as f64
    }
}

/// Per-layer counters of one rank.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct EpStats {
    pub rank: usize,
    pub world_size: usize,
    pub layers: BTreeMap<usize, LayerStats>,
}

impl EpStats {
    pub fn new(rank: usize, world_size: usize) -> Self {
        Self {
            rank,
            world_size,
            layers: BTreeMap::new(),
        }
    }

    pub(crate) fn layer_mut(&mut self, layer: usize, num_experts: usize) -> &mut LayerStats {
        let world = self.world_size;
        self.layers
            .entry(layer)
            .or_insert_with(|| LayerStats::new(num_experts, world))
    }
}
