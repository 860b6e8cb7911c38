//! Captures the routing of chosen sequences during forward passes (trace recording).
//!
//! A rank sees only its own sequences (attention is data-parallel), so each rank captures
//! what its sequences selected and the router assembles the request's trace. Sequences that
//! are not traced are skipped with one hash lookup per layer; a forward pass without traced
//! sequences installs no capture at all.

use std::collections::HashMap;
use std::ops::Range;

use super::{Routing, RoutingObserver};
use crate::kv_cache::SeqId;

/// What one sequence's tokens selected in one forward pass, layer-major: for each entry of
/// `layers`, `tokens * top_k` expert ids in token order, each token's choices in the gate's
/// order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SeqRouting {
    pub layers: Vec<u32>,
    pub top_k: usize,
    /// Tokens per layer entry (the sequence's tokens in the forward pass).
    pub tokens: usize,
    pub ids: Vec<u16>,
    pub weights: Vec<f32>,
    /// Whether the tokens were prompt tokens.
    pub prompt: bool,
}

/// A [`RoutingObserver`] that keeps the routing of the sequences it was asked to trace, for
/// one forward pass.
#[derive(Debug, Default)]
pub struct RoutingCapture {
    seqs: HashMap<SeqId, SeqRouting>,
}

impl RoutingCapture {
    /// Captures `seqs` only.
    pub fn new(seqs: impl IntoIterator<Item = SeqId>) -> Self {
        Self {
            seqs: seqs
                .into_iter()
                .map(|s| (s, SeqRouting::default()))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Hands over what was captured for `seq` (None if it was not traced).
    pub fn take(&mut self, seq: SeqId) -> Option<SeqRouting> {
        self.seqs.remove(&seq)
    }
}

impl RoutingObserver for RoutingCapture {
    fn observe(&mut self, layer: usize, spans: &[(SeqId, Range<usize>, bool)], routing: &Routing) {
        let k = routing.top_k;
        for (seq, rows, prompt) in spans {
            let Some(c) = self.seqs.get_mut(seq) else {
                continue;
            };
            let r = rows.start * k..rows.end * k;
            // Expert ids beyond u16 do not exist in any supported model (`num_experts` is at
            // most a few hundred); saturate rather than wrap so a reader's range check fails.
            c.ids.extend(
                routing.ids[r.clone()]
                    .iter()
                    .map(|&e| u16::try_from(e).unwrap_or(u16::MAX)),
            );
            c.weights.extend_from_slice(&routing.weights[r]);
            c.layers.push(layer as u32);
            c.top_k = k;
            c.tokens = rows.len();
            c.prompt = *prompt;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::moe::WeightApplication;

    fn routing(ids: Vec<u32>) -> Routing {
        let weights = ids.iter().map(|&i| i as f32 / 10.0).collect();
        Routing {
            top_k: 2,
            ids,
            weights,
            apply: WeightApplication::Output,
        }
    }

    #[test]
    fn keeps_only_traced_sequences_layer_major() {
        let mut c = RoutingCapture::new([7]);
        // Sequence 3 owns row 0, sequence 7 rows 1..3.
        let spans = vec![(3, 0..1, false), (7, 1..3, true)];
        c.observe(1, &spans, &routing(vec![0, 1, 2, 3, 4, 5]));
        c.observe(3, &spans, &routing(vec![6, 7, 1, 0, 3, 2]));
        assert!(c.take(3).is_none());
        let r = c.take(7).expect("traced");
        assert_eq!(r.layers, vec![1, 3]);
        assert_eq!((r.top_k, r.tokens, r.prompt), (2, 2, true));
        assert_eq!(r.ids, vec![2, 3, 4, 5, 1, 0, 3, 2]);
        assert_eq!(r.weights, vec![0.2, 0.3, 0.4, 0.5, 0.1, 0.0, 0.3, 0.2]);
        assert!(c.is_empty());
    }
}
