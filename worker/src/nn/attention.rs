//! Scaled dot-product attention of new query rows against one sequence's cached keys and
//! values, read straight from the block KV cache (no gather into a contiguous copy).

use rayon::prelude::*;

use crate::kv_cache::SeqView;

/// Which cached positions a query at position `p` may attend to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttnMask {
    /// Positions `0..=p`.
    Causal,
    /// Positions from the start of `p`'s chunk to `p` (Llama-4's chunked local attention).
    Chunked(usize),
}

impl AttnMask {
    #[inline]
    fn first_visible(self, p: usize) -> usize {
        match self {
            AttnMask::Causal => 0,
            AttnMask::Chunked(c) => (p / c) * c,
        }
    }
}

/// Head layout and scaling of one attention layer.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub qk_dim: usize,
    pub v_dim: usize,
    pub scale: f32,
    pub mask: AttnMask,
}

/// Attends `q` (`n` rows of `num_heads * qk_dim`, for positions `start..start + n`) over the
/// sequence's cache, which must already hold positions `0..start + n`. Writes `n` rows of
/// `num_heads * v_dim` to `out`. Softmax runs in f32 with the running maximum subtracted.
pub fn attend(view: &SeqView<'_>, q: &[f32], start: usize, shape: &AttnShape, out: &mut [f32]) {
    let AttnShape {
        num_heads,
        num_kv_heads,
        qk_dim,
        v_dim,
        scale,
        mask,
    } = *shape;
    let group = num_heads / num_kv_heads;
    out.par_chunks_mut(v_dim)
        .enumerate()
        .for_each_init(Vec::new, |scores, (idx, o)| {
            let (row, h) = (idx / num_heads, idx % num_heads);
            let p = start + row;
            let kvh = h / group;
            let qh = &q[(row * num_heads + h) * qk_dim..(row * num_heads + h + 1) * qk_dim];
            let first = mask.first_visible(p);
            scores.clear();
            let mut max = f32::NEG_INFINITY;
            for j in first..=p {
                let k = &view.key(j)[kvh * qk_dim..(kvh + 1) * qk_dim];
                let s = dot(qh, k) * scale;
                max = max.max(s);
                scores.push(s);
            }
            let mut sum = 0f32;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            let inv = 1.0 / sum;
            o.fill(0.0);
            for (j, s) in (first..=p).zip(scores.iter()) {
                let v = &view.value(j)[kvh * v_dim..(kvh + 1) * v_dim];
                let w = s * inv;
                for (oi, vi) in o.iter_mut().zip(v) {
                    *oi += w * vi;
                }
            }
        });
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent accumulators let the compiler vectorise without reassociation flags.
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_cache::{KvCache, KvCacheConfig};

    /// Reference attention over dense rows, for comparison.
    fn naive(
        q: &[f32],
        k: &[Vec<f32>],
        v: &[Vec<f32>],
        p: usize,
        first: usize,
        scale: f32,
    ) -> Vec<f32> {
        let s: Vec<f32> = (first..=p)
            .map(|j| q.iter().zip(&k[j]).map(|(a, b)| a * b).sum::<f32>() * scale)
            .collect();
        let m = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = s.iter().map(|x| (x - m).exp()).collect();
        let z: f32 = e.iter().sum();
        let mut o = vec![0.0; v[0].len()];
        for (idx, j) in (first..=p).enumerate() {
            for (oi, vi) in o.iter_mut().zip(&v[j]) {
                *oi += e[idx] / z * vi;
            }
        }
        o
    }

    #[test]
    fn matches_naive_across_blocks_and_chunks() {
        let (d, n) = (4usize, 11usize);
        let mut c = KvCache::new(KvCacheConfig {
            num_layers: 1,
            block_size: 3,
            num_blocks: 8,
            key_width: d,
            value_width: d,
        });
        c.reserve(5, n).unwrap();
        let ks: Vec<Vec<f32>> = (0..n)
            .map(|j| (0..d).map(|i| ((j * 7 + i) as f32 * 0.37).sin()).collect())
            .collect();
        let vs: Vec<Vec<f32>> = (0..n)
            .map(|j| (0..d).map(|i| ((j * 3 + i) as f32 * 0.11).cos()).collect())
            .collect();
        for j in 0..n {
            c.write(0, 5, j, &ks[j], &vs[j]).unwrap();
        }
        let q: Vec<f32> = (0..n * d).map(|i| (i as f32 * 0.21).sin()).collect();
        for mask in [AttnMask::Causal, AttnMask::Chunked(4)] {
            let shape = AttnShape {
                num_heads: 1,
                num_kv_heads: 1,
                qk_dim: d,
                v_dim: d,
                scale: 0.5,
                mask,
            };
            let mut out = vec![0.0; n * d];
            attend(&c.view(0, 5).unwrap(), &q, 0, &shape, &mut out);
            for p in 0..n {
                let first = mask.first_visible(p);
                let want = naive(&q[p * d..(p + 1) * d], &ks, &vs, p, first, 0.5);
                for (a, b) in out[p * d..(p + 1) * d].iter().zip(&want) {
                    assert!((a - b).abs() < 1e-5, "{mask:?} pos {p}: {a} vs {b}");
                }
            }
        }
    }
}
