//! Grouped-query attention with the per-architecture extras: Qwen3's per-head RMSNorm of q
//! and k before rotary embeddings; Llama-4's NoPE layers, chunked attention, L2 q/k norm after
//! rotary embeddings and attention-temperature tuning.

use candle_core::Tensor;

use super::{cache_and_attend, to_f32_rows, Attention};
use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::model::BatchLayout;
use crate::nn::attention::{AttnMask, AttnShape};
use crate::nn::rope::Rope;
use crate::nn::{Linear, RmsNorm};

/// How queries and keys are normalised per head.
#[derive(Debug, Clone)]
pub enum QkNorm {
    None,
    /// Learned RMSNorm per head, applied before the rotary embedding (Qwen3).
    RmsBeforeRope {
        q: RmsNorm,
        k: RmsNorm,
    },
    /// Weightless L2 norm per head, applied after the rotary embedding (Llama-4).
    L2AfterRope {
        eps: f32,
    },
}

#[derive(Debug, Clone)]
pub struct GqaAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub qk_norm: QkNorm,
    /// `None` for NoPE layers.
    pub rope: Option<Rope>,
    pub mask: AttnMask,
    /// Llama-4 attention-temperature tuning `(floor_scale, attn_scale)` for NoPE layers.
    pub temperature: Option<(f32, f32)>,
}

fn l2_norm_heads(x: &mut [f32], dim: usize, eps: f32) {
    for h in x.chunks_exact_mut(dim) {
        let ms = h.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let r = 1.0 / (ms + eps).sqrt();
        h.iter_mut().for_each(|v| *v *= r);
    }
}

impl GqaAttention {
    /// q, k (normalised per head where the architecture says so, before the rotary
    /// embedding) and v as f32 rows. On f32 CPU tensors the three projections run in one
    /// parallel region straight into rows, and the per-head RMSNorm works on those rows:
    /// no intermediate tensors or copies.
    fn project(&self, x: &Tensor, t: usize) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let ws = [
            self.q_proj.weight(),
            self.k_proj.weight(),
            self.v_proj.weight(),
        ];
        if let Some(mut rows) = crate::nn::kernels::linear_rows(x, &ws) {
            let (v, k, q) = (rows.pop(), rows.pop(), rows.pop());
            if let (Some(mut q), Some(mut k), Some(v)) = (q, k, v) {
                if let QkNorm::RmsBeforeRope { q: qn, k: kn } = &self.qk_norm {
                    qn.forward_rows_f32(&mut q)?;
                    kn.forward_rows_f32(&mut k)?;
                }
                return Ok((q, k, v));
            }
        }
        let mut q = self.q_proj.forward(x)?;
        let mut k = self.k_proj.forward(x)?;
        let v = self.v_proj.forward(x)?;
        if let QkNorm::RmsBeforeRope { q: qn, k: kn } = &self.qk_norm {
            q = qn.forward(&q.reshape((t * nh, hd))?)?;
            k = kn.forward(&k.reshape((t * nkv, hd))?)?;
        }
        Ok((to_f32_rows(&q)?, to_f32_rows(&k)?, to_f32_rows(&v)?))
    }
}

impl Attention for GqaAttention {
    fn forward(
        &self,
        layer: usize,
        x: &Tensor,
        b: &BatchLayout,
        kv: &mut KvCache,
    ) -> Result<Tensor> {
        let t = b.num_tokens();
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let (mut q, mut k, v) = self.project(x, t)?;
        if let Some(rope) = &self.rope {
            rope.apply(&mut q, nh * hd, nh, hd, 0, b.positions.iter().copied());
            rope.apply(&mut k, nkv * hd, nkv, hd, 0, b.positions.iter().copied());
        }
        if let QkNorm::L2AfterRope { eps } = self.qk_norm {
            l2_norm_heads(&mut q, hd, eps);
            l2_norm_heads(&mut k, hd, eps);
        }
        if let Some((floor_scale, attn_scale)) = self.temperature {
            for (row, &p) in q.chunks_exact_mut(nh * hd).zip(&b.positions) {
                let s = (((p as f32 + 1.0) / floor_scale).floor() + 1.0).ln() * attn_scale + 1.0;
                row.iter_mut().for_each(|v| *v *= s);
            }
        }
        let shape = AttnShape {
            num_heads: nh,
            num_kv_heads: nkv,
            qk_dim: hd,
            v_dim: hd,
            scale: 1.0 / (hd as f32).sqrt(),
            mask: self.mask,
        };
        let out = cache_and_attend(layer, b, kv, &q, &k, &v, &shape)?;
        let out = Tensor::from_vec(out, (t, nh * hd), x.device())?.to_dtype(x.dtype())?;
        self.o_proj.forward(&out)
    }
}
