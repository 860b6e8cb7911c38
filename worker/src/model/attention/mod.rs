//! Attention variants. Each projects the batch's tokens, rotates, writes keys and values to
//! the block KV cache and attends per sequence with [`crate::nn::attention::attend`].

pub(crate) mod gqa;
pub(crate) mod mla;

pub use gqa::{GqaAttention, QkNorm};
pub use mla::MlaAttention;

use candle_core::{DType, Tensor};

use super::BatchLayout;
use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::nn::attention::{attend_batch, AttnJob, AttnShape};

/// One layer's attention.
pub trait Attention: Send + Sync + std::fmt::Debug {
    /// `x`: normalised hidden states `[tokens, hidden]` → attention output `[tokens, hidden]`.
    fn forward(
        &self,
        layer: usize,
        x: &Tensor,
        b: &BatchLayout,
        kv: &mut KvCache,
    ) -> Result<Tensor>;
}

/// Rows of a 2-D tensor as one f32 vector.
pub(crate) fn to_f32_rows(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

/// Writes each token's key and value into the cache, then attends each sequence's queries.
/// `q`, `k`, `v` are token-major rows; returns `[tokens, num_heads * v_dim]` rows.
pub(crate) fn cache_and_attend(
    layer: usize,
    b: &BatchLayout,
    kv: &mut KvCache,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: &AttnShape,
) -> Result<Vec<f32>> {
    let kw = kv.config().key_width;
    let vw = kv.config().value_width;
    let qw = shape.num_heads * shape.qk_dim;
    let ow = shape.num_heads * shape.v_dim;
    for (seq, rows, _) in &b.spans {
        for r in rows.clone() {
            kv.write(
                layer,
                *seq,
                b.positions[r],
                &k[r * kw..(r + 1) * kw],
                &v[r * vw..(r + 1) * vw],
            )?;
        }
    }
    let mut out = vec![0f32; b.num_tokens() * ow];
    let views = b
        .spans
        .iter()
        .map(|(seq, _, _)| kv.view(layer, *seq))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let jobs: Vec<AttnJob<'_, '_>> = b
        .spans
        .iter()
        .zip(&b.starts)
        .zip(&views)
        .map(|(((_, rows, _), &start), view)| AttnJob {
            view,
            q: &q[rows.start * qw..rows.end * qw],
            start,
        })
        .collect();
    // The output splits by span when the spans tile the rows in order (as `prepare` lays
    // them out); then all sequences share one parallel region (see `attend_batch`).
    let mut next = 0;
    let tiled = b.spans.iter().all(|(_, rows, _)| {
        let ok = rows.start == next;
        next = rows.end;
        ok
    });
    if tiled {
        let mut outs = Vec::with_capacity(jobs.len());
        let mut rest = &mut out[..];
        for (_, rows, _) in &b.spans {
            let (head, tail) = rest.split_at_mut(rows.len() * ow);
            outs.push(head);
            rest = tail;
        }
        attend_batch(&jobs, shape, outs);
    } else {
        for (job, (_, rows, _)) in jobs.iter().zip(&b.spans) {
            let o = &mut out[rows.start * ow..rows.end * ow];
            attend_batch(std::slice::from_ref(job), shape, vec![o]);
        }
    }
    Ok(out)
}
