//! Routing rules. Each reproduces its reference implementation's arithmetic, including the
//! order of normalisation and scaling, so that the same experts are selected.

mod grouped_sigmoid;
pub use grouped_sigmoid::GroupLimitedParams;
mod softmax_topk;
mod topk_sigmoid_input;

pub use grouped_sigmoid::GroupLimitedSigmoidGate;
pub use softmax_topk::SoftmaxTopKGate;
pub use topk_sigmoid_input::TopKSigmoidInputGate;

use candle_core::{DType, Tensor};

use super::{Routing, WeightApplication};
use crate::error::Result;

/// A router: hidden states `[tokens, hidden]` → the experts each token selects.
pub trait Gate: Send + Sync + std::fmt::Debug {
    fn route(&self, x: &Tensor) -> Result<Routing>;
    fn num_experts(&self) -> usize;
    fn top_k(&self) -> usize;
    /// Where this rule's weights apply; every rank of a group must agree on it, including
    /// ranks that route no tokens in a step.
    fn weight_application(&self) -> WeightApplication {
        WeightApplication::Output
    }
}

/// Router logits `x W^T` in f32, as rows.
pub(crate) fn logits_f32(x: &Tensor, w: &Tensor) -> Result<Vec<Vec<f32>>> {
    let l = x.to_dtype(DType::F32)?.matmul(&w.t()?)?;
    Ok(l.to_vec2::<f32>()?)
}

/// Indices of the `k` largest values, largest first; ties go to the lower index (as
/// `torch.topk` on CPU does for distinct values; exact ties are vanishingly rare in practice).
pub(crate) fn top_k_indices(v: &[f32], k: usize) -> Vec<usize> {
    let k = k.min(v.len());
    if k == 0 {
        return Vec::new();
    }
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.select_nth_unstable_by(k - 1, |&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_and_breaks_ties_low() {
        assert_eq!(top_k_indices(&[0.1, 0.9, 0.5, 0.9], 3), vec![1, 3, 2]);
        assert_eq!(top_k_indices(&[1.0], 1), vec![0]);
    }
}
