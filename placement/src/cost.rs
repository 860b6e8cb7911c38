//! The roofline cost of running one expert on a batch of tokens.

use serde::{Deserialize, Serialize};

use crate::profile::DeviceProfile;

/// Dimensions of one routed expert (a SwiGLU MLP: gate, up and down projections).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpertShape {
    /// Model (hidden) width H.
    pub hidden_size: usize,
    /// Expert intermediate width F.
    pub intermediate_size: usize,
    /// Bytes per stored weight (2 for BF16, 1 for FP8).
    pub weight_bytes: f64,
}

impl ExpertShape {
    /// A DeepSeek-V3 routed expert: H = 7168, F = 2048, BF16 weights.
    pub fn deepseek_v3() -> Self {
        Self {
            hidden_size: 7168,
            intermediate_size: 2048,
            weight_bytes: 2.0,
        }
    }

    /// Bytes of the three projection matrices.
    pub fn bytes(&self) -> f64 {
        3.0 * self.hidden_size as f64 * self.intermediate_size as f64 * self.weight_bytes
    }

    /// FLOPs per token: three H x F matrix-vector products, two FLOPs per multiply-add.
    pub fn flops_per_token(&self) -> f64 {
        2.0 * 3.0 * self.hidden_size as f64 * self.intermediate_size as f64
    }
}

impl Default for ExpertShape {
    fn default() -> Self {
        Self::deepseek_v3()
    }
}

/// Converts an expert's token count into time: `max(weight bytes / memory bandwidth,
/// FLOPs / FLOP rate)` when it has any tokens, zero otherwise (an idle expert reads nothing).
///
/// Trace counts cover whole runs, not one step. With `tokens_per_step` set, a layer's counts
/// are first scaled to one step in which the group processes that many tokens, so that cold
/// experts land on the memory-bound floor as they would in serving; without it the counts are
/// used as they are (for run-sized counts that is the compute-bound, linear regime, where the
/// cost ranks experts exactly as their token counts do).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CostModel {
    pub expert: ExpertShape,
    pub profile: DeviceProfile,
    /// Tokens the whole group processes per step (each selecting top-k experts).
    pub tokens_per_step: Option<f64>,
}

impl CostModel {
    /// Seconds to run one expert on `tokens` tokens.
    pub fn cost(&self, tokens: f64) -> f64 {
        if tokens <= 0.0 {
            return 0.0;
        }
        let mem = self.expert.bytes() / self.profile.mem_bw;
        let compute = self.expert.flops_per_token() * tokens / self.profile.flops;
        mem.max(compute)
    }

    /// The factor that turns a layer's counts into per-step tokens: `tokens_per_step * top_k
    /// / total selections`, or 1 without `tokens_per_step` (or for an empty layer).
    pub fn step_scale(&self, total_selections: f64, top_k: usize) -> f64 {
        match self.tokens_per_step {
            Some(t) if total_selections > 0.0 => t * top_k.max(1) as f64 / total_selections,
            _ => 1.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roofline_has_a_memory_floor_and_a_compute_slope() {
        let m = CostModel::default();
        assert_eq!(m.cost(0.0), 0.0);
        let floor = m.expert.bytes() / m.profile.mem_bw;
        assert_eq!(m.cost(1.0), floor);
        // Far past the ridge point the cost is linear in tokens.
        let a = m.cost(1e5);
        let b = m.cost(2e5);
        assert!((b / a - 2.0).abs() < 1e-9);
        assert!(a > floor);
        assert_eq!(m.step_scale(800.0, 8), 1.0);
        let s = CostModel {
            tokens_per_step: Some(100.0),
            ..CostModel::default()
        };
        assert_eq!(s.step_scale(800.0, 8), 1.0);
        assert_eq!(s.step_scale(1600.0, 8), 0.5);
    }
}
