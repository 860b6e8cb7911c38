//! Token selections waiting to be applied to the per-token counters. A DeepSeek-sized
//! analyzer holds tens of MB of matrices, more than the L3 cache; applying each request on its
//! own would sweep all of them for a few hundred tokens. Buffering a few thousand tokens per
//! phase and applying them slot by slot (one matrix at a time, row by row) reads each matrix
//! once per buffer instead.

use crate::model::Iteration;
use crate::MISSING_EXPERT;

/// Tokens of one phase, aligned across MoE layers.
#[derive(Debug, Clone)]
pub struct TokenBuffer {
    k: usize,
    /// Per MoE-layer slot: `tokens * k` expert ids, `MISSING_EXPERT` where a token has no
    /// selection at that layer.
    layers: Vec<Vec<u16>>,
    /// Per token: it is the next decode step of the previous buffered token (same request).
    follows: Vec<bool>,
}

impl TokenBuffer {
    pub fn new(slots: usize, k: usize) -> Self {
        Self {
            k,
            layers: vec![Vec::new(); slots],
            follows: Vec::new(),
        }
    }

    pub fn tokens(&self) -> usize {
        self.follows.len()
    }

    /// Appends an iteration's tokens; `follows_previous` marks a decode step that directly
    /// follows the last buffered token of the same request.
    pub fn push(
        &mut self,
        it: &Iteration,
        slot: impl Fn(u32) -> Option<usize>,
        follows_previous: bool,
    ) {
        let tokens = it.num_tokens();
        if tokens == 0 {
            return;
        }
        let base = self.tokens() * self.k;
        let end = base + tokens * self.k;
        for l in &mut self.layers {
            l.resize(end, MISSING_EXPERT);
        }
        for lr in &it.layers {
            let Some(s) = slot(lr.layer) else { continue };
            let n = lr.num_tokens().min(tokens) * self.k;
            if lr.top_k as usize == self.k {
                self.layers[s][base..base + n].copy_from_slice(&lr.experts[..n]);
            }
        }
        self.follows.push(follows_previous);
        self.follows.extend(std::iter::repeat_n(false, tokens - 1));
    }

    /// Token `t`'s selection at slot `m`.
    #[inline]
    pub fn sel(&self, m: usize, t: usize) -> &[u16] {
        &self.layers[m][t * self.k..(t + 1) * self.k]
    }

    /// Tokens that directly follow their predecessor.
    pub fn followers(&self) -> Vec<usize> {
        (1..self.tokens()).filter(|&t| self.follows[t]).collect()
    }

    pub fn clear(&mut self) {
        for l in &mut self.layers {
            l.clear();
        }
        self.follows.clear();
    }
}
