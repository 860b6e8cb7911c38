//! The routing decision of one MoE layer for a batch of tokens.

/// Where a routing weight is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum WeightApplication {
    /// `sum_k w_k * expert_k(x)` (Qwen3, DeepSeek-V3).
    Output,
    /// `sum_k expert_k(w_k * x)` (Llama-4 scales the expert's input by its router score).
    Input,
}

/// The experts selected for each token and their weights, `top_k` per token, token-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    pub top_k: usize,
    /// `[tokens * top_k]` expert ids.
    pub ids: Vec<u32>,
    /// `[tokens * top_k]` weights, aligned with `ids`.
    pub weights: Vec<f32>,
    pub apply: WeightApplication,
}

impl Routing {
    pub fn num_tokens(&self) -> usize {
        self.ids.len().checked_div(self.top_k).unwrap_or(0)
    }

    /// The selections of token `t`.
    pub fn token(&self, t: usize) -> (&[u32], &[f32]) {
        let r = t * self.top_k..(t + 1) * self.top_k;
        (&self.ids[r.clone()], &self.weights[r])
    }

    /// The routing of tokens `range` only (a sequence's share of a batch).
    pub fn slice(&self, range: std::ops::Range<usize>) -> Routing {
        let r = range.start * self.top_k..range.end * self.top_k;
        Routing {
            top_k: self.top_k,
            ids: self.ids[r.clone()].to_vec(),
            weights: self.weights[r].to_vec(),
            apply: self.apply,
        }
    }
}
