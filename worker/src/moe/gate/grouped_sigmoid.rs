//! DeepSeek-V3's `noaux_tc` routing: sigmoid scores, a per-expert correction bias used only
//! for selection, group-limited top-k, renormalisation and `routed_scaling_factor`.

use candle_core::{DType, Tensor};

use super::{logits_f32, top_k_indices, Gate};
use crate::error::Result;
use crate::moe::{Routing, WeightApplication};
use crate::weights::{WeightStore, WeightsError};

#[derive(Debug, Clone)]
pub struct GroupLimitedSigmoidGate {
    w: Tensor,
    bias: Vec<f32>,
    top_k: usize,
    n_group: usize,
    topk_group: usize,
    norm_topk_prob: bool,
    routed_scaling_factor: f32,
}

/// Settings of the DeepSeek router (the config's names).
#[derive(Debug, Clone, Copy)]
pub struct GroupLimitedParams {
    pub num_experts: usize,
    pub hidden: usize,
    pub top_k: usize,
    pub n_group: usize,
    pub topk_group: usize,
    pub norm_topk_prob: bool,
    pub routed_scaling_factor: f64,
}

impl GroupLimitedSigmoidGate {
    /// Loads `{prefix}.weight` and `{prefix}.e_score_correction_bias` (zero if absent, as in
    /// checkpoints trained without the auxiliary-loss-free balancing).
    pub fn load(
        ws: &WeightStore,
        prefix: &str,
        p: GroupLimitedParams,
    ) -> Result<Self, WeightsError> {
        let w = ws.get_as(
            &format!("{prefix}.weight"),
            &[p.num_experts, p.hidden],
            DType::F32,
        )?;
        let bias_name = format!("{prefix}.e_score_correction_bias");
        let bias = if ws.contains(&bias_name) {
            let t = ws.get_as(&bias_name, &[p.num_experts], DType::F32)?;
            t.to_vec1::<f32>().map_err(|source| WeightsError::Tensor {
                name: bias_name,
                source,
            })?
        } else {
            vec![0.0; p.num_experts]
        };
        Ok(Self {
            w,
            bias,
            top_k: p.top_k,
            n_group: p.n_group,
            topk_group: p.topk_group,
            norm_topk_prob: p.norm_topk_prob,
            routed_scaling_factor: p.routed_scaling_factor as f32,
        })
    }
}

impl Gate for GroupLimitedSigmoidGate {
    fn route(&self, x: &Tensor) -> Result<Routing> {
        let rows = logits_f32(x, &self.w)?;
        let e = self.bias.len();
        let per_group = e / self.n_group;
        let mut ids = Vec::with_capacity(rows.len() * self.top_k);
        let mut weights = Vec::with_capacity(rows.len() * self.top_k);
        for row in rows {
            let scores: Vec<f32> = row.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect();
            let mut choice: Vec<f32> = scores.iter().zip(&self.bias).map(|(s, b)| s + b).collect();
            // A group's score is the sum of its two best biased scores.
            let group_scores: Vec<f32> = choice
                .chunks(per_group)
                .map(|g| top_k_indices(g, 2).iter().map(|&i| g[i]).sum())
                .collect();
            let keep = top_k_indices(&group_scores, self.topk_group);
            // Experts of other groups are masked to 0.0 (not -inf), as the reference does.
            for (g, chunk) in choice.chunks_mut(per_group).enumerate() {
                if !keep.contains(&g) {
                    chunk.fill(0.0);
                }
            }
            let top = top_k_indices(&choice, self.top_k);
            let denom: f32 = if self.norm_topk_prob {
                top.iter().map(|&i| scores[i]).sum::<f32>() + 1e-20
            } else {
                1.0
            };
            for i in top {
                ids.push(i as u32);
                weights.push(scores[i] / denom * self.routed_scaling_factor);
            }
        }
        Ok(Routing {
            top_k: self.top_k,
            ids,
            weights,
            apply: WeightApplication::Output,
        })
    }

    fn num_experts(&self) -> usize {
        self.bias.len()
    }

    fn top_k(&self) -> usize {
        self.top_k
    }
}
