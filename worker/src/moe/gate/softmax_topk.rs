//! Softmax over all experts, top-k, optional renormalisation (Qwen3-MoE).

use candle_core::{DType, Tensor};

use super::{logits_f32, top_k_indices, Gate};
use crate::error::Result;
use crate::moe::{Routing, WeightApplication};
use crate::weights::{WeightStore, WeightsError};

#[derive(Debug, Clone)]
pub struct SoftmaxTopKGate {
    w: Tensor,
    top_k: usize,
    norm_topk_prob: bool,
}

impl SoftmaxTopKGate {
    pub fn load(
        ws: &WeightStore,
        name: &str,
        num_experts: usize,
        hidden: usize,
        top_k: usize,
        norm_topk_prob: bool,
    ) -> Result<Self, WeightsError> {
        Ok(Self {
            w: ws.get_as(name, &[num_experts, hidden], DType::F32)?,
            top_k,
            norm_topk_prob,
        })
    }
}

impl Gate for SoftmaxTopKGate {
    fn route(&self, x: &Tensor) -> Result<Routing> {
        let rows = logits_f32(x, &self.w)?;
        let mut ids = Vec::with_capacity(rows.len() * self.top_k);
        let mut weights = Vec::with_capacity(rows.len() * self.top_k);
        for row in rows {
            let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = row.iter().map(|v| (v - m).exp()).collect();
            let z: f32 = e.iter().sum();
            let p: Vec<f32> = e.iter().map(|v| v / z).collect();
            let top = top_k_indices(&p, self.top_k);
            let s: f32 = top.iter().map(|&i| p[i]).sum();
            for i in top {
                ids.push(i as u32);
                weights.push(if self.norm_topk_prob { p[i] / s } else { p[i] });
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
        self.w.dims()[0]
    }

    fn top_k(&self) -> usize {
        self.top_k
    }
}
