//! Llama-4 routing: top-k of the raw logits, the sigmoid of each selected logit as its score,
//! and the score scales the expert's input.

use candle_core::{DType, Tensor};

use super::{logits_f32, top_k_indices, Gate};
use crate::error::Result;
use crate::moe::{Routing, WeightApplication};
use crate::weights::{WeightStore, WeightsError};

#[derive(Debug, Clone)]
pub struct TopKSigmoidInputGate {
    w: Tensor,
    top_k: usize,
}

impl TopKSigmoidInputGate {
    pub fn load(
        ws: &WeightStore,
        name: &str,
        num_experts: usize,
        hidden: usize,
        top_k: usize,
    ) -> Result<Self, WeightsError> {
        Ok(Self {
            w: ws.get_as(name, &[num_experts, hidden], DType::F32)?,
            top_k,
        })
    }
}

impl Gate for TopKSigmoidInputGate {
    fn route(&self, x: &Tensor) -> Result<Routing> {
        let rows = logits_f32(x, &self.w)?;
        let mut ids = Vec::with_capacity(rows.len() * self.top_k);
        let mut weights = Vec::with_capacity(rows.len() * self.top_k);
        for row in rows {
            for i in top_k_indices(&row, self.top_k) {
                ids.push(i as u32);
                weights.push(1.0 / (1.0 + (-row[i]).exp()));
            }
        }
        Ok(Routing {
            top_k: self.top_k,
            ids,
            weights,
            apply: WeightApplication::Input,
        })
    }

    fn num_experts(&self) -> usize {
        self.w.dims()[0]
    }

    fn top_k(&self) -> usize {
        self.top_k
    }

    fn weight_application(&self) -> WeightApplication {
        WeightApplication::Input
    }
}
