//! DeepSeek-V3 multi-head latent attention.
//!
//! Queries go through a low-rank bottleneck (`q_a_proj` → RMSNorm → `q_b_proj`, or one
//! `q_proj`); keys and values are decompressed from a shared latent (`kv_a_proj_with_mqa` →
//! RMSNorm → `kv_b_proj`) plus one rotary key part shared by all heads. The cache holds the
//! decompressed per-head keys and values, so attention is the ordinary kind; caching the
//! latent instead (the absorbed form) would cut cache memory by about
//! `num_heads * (qk_head_dim + v_head_dim) / (kv_lora_rank + qk_rope_head_dim)` and is a
//! separate optimisation.

use candle_core::Tensor;

use super::{cache_and_attend, to_f32_rows, Attention};
use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::model::BatchLayout;
use crate::nn::attention::{AttnMask, AttnShape};
use crate::nn::rope::Rope;
use crate::nn::{Linear, RmsNorm};

/// The query path: low-rank with a norm in the middle, or a single projection.
#[derive(Debug, Clone)]
pub enum QueryProj {
    LowRank { a: Linear, norm: RmsNorm, b: Linear },
    Full(Linear),
}

#[derive(Debug, Clone)]
pub struct MlaAttention {
    pub q: QueryProj,
    pub kv_a: Linear,
    pub kv_a_norm: RmsNorm,
    pub kv_b: Linear,
    pub o_proj: Linear,
    pub num_heads: usize,
    pub nope_dim: usize,
    pub rope_dim: usize,
    pub v_dim: usize,
    pub kv_lora_rank: usize,
    pub rope: Rope,
    pub scale: f32,
}

impl Attention for MlaAttention {
    fn forward(
        &self,
        layer: usize,
        x: &Tensor,
        b: &BatchLayout,
        kv: &mut KvCache,
    ) -> Result<Tensor> {
        let t = b.num_tokens();
        let (nh, nope, rd, vd) = (self.num_heads, self.nope_dim, self.rope_dim, self.v_dim);
        let qk = nope + rd;
        let q = match &self.q {
            QueryProj::LowRank { a, norm, b } => b.forward(&norm.forward(&a.forward(x)?)?)?,
            QueryProj::Full(p) => p.forward(x)?,
        };
        let mut q = to_f32_rows(&q)?; // [t, nh * (nope + rope)]
        let ckv = self.kv_a.forward(x)?; // [t, kv_lora_rank + rope]
        let latent = ckv.narrow(1, 0, self.kv_lora_rank)?;
        let mut k_pe = to_f32_rows(&ckv.narrow(1, self.kv_lora_rank, rd)?.contiguous()?)?; // [t, rope]
        let kvd = to_f32_rows(
            &self
                .kv_b
                .forward(&self.kv_a_norm.forward(&latent.contiguous()?)?)?,
        )?; // [t, nh*(nope+v)]
        self.rope
            .apply(&mut q, nh * qk, nh, qk, nope, b.positions.iter().copied());
        self.rope
            .apply(&mut k_pe, rd, 1, rd, 0, b.positions.iter().copied());
        // Assemble per-head keys [nope | shared rope part] and values.
        let mut k = vec![0f32; t * nh * qk];
        let mut v = vec![0f32; t * nh * vd];
        for r in 0..t {
            for h in 0..nh {
                let src = &kvd[(r * nh + h) * (nope + vd)..(r * nh + h + 1) * (nope + vd)];
                let kd = &mut k[(r * nh + h) * qk..(r * nh + h + 1) * qk];
                kd[..nope].copy_from_slice(&src[..nope]);
                kd[nope..].copy_from_slice(&k_pe[r * rd..(r + 1) * rd]);
                v[(r * nh + h) * vd..(r * nh + h + 1) * vd].copy_from_slice(&src[nope..]);
            }
        }
        let shape = AttnShape {
            num_heads: nh,
            num_kv_heads: nh,
            qk_dim: qk,
            v_dim: vd,
            scale: self.scale,
            mask: AttnMask::Causal,
        };
        let out = cache_and_attend(layer, b, kv, &q, &k, &v, &shape)?;
        let out = Tensor::from_vec(out, (t, nh * vd), x.device())?.to_dtype(x.dtype())?;
        self.o_proj.forward(&out)
    }
}
