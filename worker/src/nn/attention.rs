//! Scaled dot-product attention of new query rows against one sequence's cached keys and
//! values, read straight from the block KV cache (no gather into a contiguous copy).

use rayon::prelude::*;

use crate::kv_cache::SeqView;
use crate::nn::kernels::fmadd;

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
    attend_batch(&[AttnJob { view, q, start }], shape, vec![out]);
}

/// One sequence's share of a batched [`attend_batch`] call (the arguments of [`attend`]).
pub(crate) struct AttnJob<'a, 'v> {
    pub view: &'a SeqView<'v>,
    pub q: &'a [f32],
    pub start: usize,
}

/// Below this many multiply-adds an attention call runs on the calling thread.
const SERIAL_MACS: usize = 1 << 15;

/// [`attend`] for several sequences at once: `outs[i]` receives job `i`'s rows. One parallel
/// region covers every (sequence, query row) task of the batch, instead of one per
/// sequence, because at decode time each sequence has a single row and the per-region
/// start-up cost would dominate. A task handles all heads of its row, so it reads each
/// cached key and value row once, front to back (per-head tasks read a quarter of every
/// row each and ran at a fifth of the memory bandwidth).
pub(crate) fn attend_batch(jobs: &[AttnJob<'_, '_>], shape: &AttnShape, outs: Vec<&mut [f32]>) {
    let AttnShape {
        num_heads,
        num_kv_heads,
        qk_dim,
        v_dim,
        ..
    } = *shape;
    if num_heads == 0 || num_kv_heads == 0 || v_dim == 0 {
        return;
    }
    let mut macs = 0usize;
    // (job, query row, that row's output: `num_heads` heads of `v_dim`).
    let mut tasks: Vec<(usize, usize, &mut [f32])> = Vec::new();
    for (ji, out) in outs.into_iter().enumerate() {
        let start = jobs[ji].start;
        for (row, o) in out.chunks_mut(num_heads * v_dim).enumerate() {
            macs += (start + row + 1) * num_heads * (qk_dim + v_dim);
            tasks.push((ji, row, o));
        }
    }
    #[cfg(target_arch = "x86_64")]
    let avx2 = crate::nn::kernels::has_avx2_fma();
    let run = |scores: &mut Vec<f32>, (ji, row, o): (usize, usize, &mut [f32])| {
        let job = &jobs[ji];
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: the CPU has AVX2 and FMA (checked at run time).
            return unsafe { attend_row_avx2(job, row, shape, scores, o) };
        }
        attend_row::<false>(job, row, shape, scores, o)
    };
    if macs < SERIAL_MACS {
        let mut scores = Vec::new();
        tasks.into_iter().for_each(|t| run(&mut scores, t));
    } else {
        tasks.into_par_iter().for_each_init(Vec::new, run);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_row_avx2(
    job: &AttnJob<'_, '_>,
    row: usize,
    shape: &AttnShape,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    attend_row::<true>(job, row, shape, scores, out)
}

/// Query row `row` of `job`, all heads; `out` receives `num_heads * v_dim` floats.
#[inline(always)]
fn attend_row<const FMA: bool>(
    job: &AttnJob<'_, '_>,
    row: usize,
    shape: &AttnShape,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let AttnShape {
        num_heads,
        num_kv_heads,
        qk_dim,
        v_dim,
        scale,
        mask,
    } = *shape;
    let group = num_heads / num_kv_heads;
    let p = job.start + row;
    let first = mask.first_visible(p);
    let len = p + 1 - first;
    let qrow = &job.q[row * num_heads * qk_dim..(row + 1) * num_heads * qk_dim];
    // scores[h * len + t]: head h, key first + t.
    scores.clear();
    scores.resize(num_heads * len, 0.0);
    for t in 0..len {
        let k = job.view.key(first + t);
        for h in 0..num_heads {
            let g = h / group;
            let qh = &qrow[h * qk_dim..(h + 1) * qk_dim];
            scores[h * len + t] = dot::<FMA>(qh, &k[g * qk_dim..(g + 1) * qk_dim]) * scale;
        }
    }
    for h in 0..num_heads {
        softmax(&mut scores[h * len..(h + 1) * len]);
    }
    out.fill(0.0);
    for t in 0..len {
        let v = job.view.value(first + t);
        for h in 0..num_heads {
            let g = h / group;
            let w = scores[h * len + t];
            let vg = &v[g * v_dim..(g + 1) * v_dim];
            for (oi, vi) in out[h * v_dim..(h + 1) * v_dim].iter_mut().zip(vg) {
                *oi = fmadd::<FMA>(w, *vi, *oi);
            }
        }
    }
}

/// In-place softmax, written so that each pass vectorises: a lane-wise maximum, the
/// exponentials (`kernels::exp`, no libm call), a lane-wise sum, the scaling. (A fold with
/// `f32::max` and a running sum are sequential and ran scalar.)
#[inline(always)]
fn softmax(s: &mut [f32]) {
    const L: usize = 8;
    let mut m = [f32::NEG_INFINITY; L];
    let chunks = s.chunks_exact(L);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..L {
            m[l] = if c[l] > m[l] { c[l] } else { m[l] };
        }
    }
    let max = tail
        .iter()
        .chain(&m)
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    for v in s.iter_mut() {
        *v = crate::nn::kernels::exp(*v - max);
    }
    let mut acc = [0f32; L];
    let chunks = s.chunks_exact(L);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for l in 0..L {
            acc[l] += c[l];
        }
    }
    let inv = 1.0 / (hsum(acc) + tail);
    s.iter_mut().for_each(|v| *v *= inv);
}

/// Sum of eight lanes as a tree (three vector steps instead of seven dependent adds).
#[inline(always)]
fn hsum(a: [f32; 8]) -> f32 {
    let b = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
    let c = [b[0] + b[2], b[1] + b[3]];
    c[0] + c[1]
}

#[inline(always)]
fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    // Sixteen independent lanes (two AVX vectors) let the compiler vectorise without
    // reassociation flags and hide the FMA latency; they are summed as a tree.
    const L: usize = 16;
    let mut acc = [0f32; L];
    let (ac, bc) = (a.chunks_exact(L), b.chunks_exact(L));
    let (at, bt) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..L {
            acc[l] = fmadd::<FMA>(x[l], y[l], acc[l]);
        }
    }
    let mut s = hsum(std::array::from_fn(|l| acc[l] + acc[l + 8]));
    for (x, y) in at.iter().zip(bt) {
        s = fmadd::<FMA>(*x, *y, s);
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

    /// Several sequences in one call, grouped-query heads (4 query heads on 2 KV heads),
    /// different starts: each output head matches the naive attention of its KV head.
    #[test]
    fn batch_with_grouped_heads_matches_naive() {
        let (nh, nkv, d) = (4usize, 2usize, 16usize);
        let mut c = KvCache::new(KvCacheConfig {
            num_layers: 1,
            block_size: 4,
            num_blocks: 64,
            key_width: nkv * d,
            value_width: nkv * d,
        });
        let lens = [9usize, 200];
        let mut kvs = Vec::new();
        for (s, &n) in lens.iter().enumerate() {
            c.reserve(s as u64, n).unwrap();
            let ks: Vec<Vec<f32>> = (0..n)
                .map(|j| {
                    (0..nkv * d)
                        .map(|i| ((j * 5 + i + s) as f32 * 0.31).sin())
                        .collect()
                })
                .collect();
            let vs: Vec<Vec<f32>> = (0..n)
                .map(|j| {
                    (0..nkv * d)
                        .map(|i| ((j * 3 + i * 2) as f32 * 0.13).cos())
                        .collect()
                })
                .collect();
            for j in 0..n {
                c.write(0, s as u64, j, &ks[j], &vs[j]).unwrap();
            }
            kvs.push((ks, vs));
        }
        let shape = AttnShape {
            num_heads: nh,
            num_kv_heads: nkv,
            qk_dim: d,
            v_dim: d,
            scale: 0.25,
            mask: AttnMask::Causal,
        };
        // Sequence 0: its last 3 positions; sequence 1: its last position (a decode step).
        let rows = [3usize, 1];
        let views: Vec<_> = (0..2).map(|s| c.view(0, s as u64).unwrap()).collect();
        let qs: Vec<Vec<f32>> = rows
            .iter()
            .map(|&n| (0..n * nh * d).map(|i| (i as f32 * 0.17).cos()).collect())
            .collect();
        let jobs: Vec<AttnJob<'_, '_>> = (0..2)
            .map(|s| AttnJob {
                view: &views[s],
                q: &qs[s],
                start: lens[s] - rows[s],
            })
            .collect();
        let mut outs: Vec<Vec<f32>> = rows.iter().map(|&n| vec![0.0; n * nh * d]).collect();
        let (a, b) = outs.split_at_mut(1);
        attend_batch(&jobs, &shape, vec![&mut a[0][..], &mut b[0][..]]);
        for s in 0..2 {
            let (ks, vs) = &kvs[s];
            for r in 0..rows[s] {
                let p = jobs[s].start + r;
                for h in 0..nh {
                    let g = h / (nh / nkv);
                    let kg: Vec<Vec<f32>> =
                        ks.iter().map(|k| k[g * d..(g + 1) * d].to_vec()).collect();
                    let vg: Vec<Vec<f32>> =
                        vs.iter().map(|v| v[g * d..(g + 1) * d].to_vec()).collect();
                    let q = &qs[s][(r * nh + h) * d..(r * nh + h + 1) * d];
                    let want = naive(q, &kg, &vg, p, 0, 0.25);
                    let got = &outs[s][(r * nh + h) * d..(r * nh + h + 1) * d];
                    for (x, y) in got.iter().zip(&want) {
                        assert!((x - y).abs() < 1e-5, "seq {s} row {r} head {h}: {x} vs {y}");
                    }
                }
            }
        }
    }
}
