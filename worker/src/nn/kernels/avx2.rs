//! The streaming kernels of products with a few rows, bound by reading the weights: written
//! once, generic over fused multiply-add, and compiled twice (portable, and with AVX2 and FMA
//! enabled), plus the register-tiled AVX2 dot kernel. [`stream_rows`] picks the kernel for
//! the weights' layout in the version the CPU can run.

#[cfg(target_arch = "x86_64")]
use std::ops::Range;

use super::{fmadd, MatRef, WeightLayout, Weights};

/// `out[i, c] = sum_l x[i, l] * w[l, c]` for a row-major `w` with row stride `w_rs`, reading
/// `w` row by row (sequential, prefetch-friendly) while `out` (`m x n`, row stride `out_rs`)
/// stays in L1.
#[inline(always)]
fn rows_axpy_body<const FMA: bool>(
    n: usize,
    k: usize,
    x: MatRef<'_>,
    w: &[f32],
    w_rs: usize,
    out: &mut [&mut [f32]],
) {
    // Column chunks small enough that the output rows stay in L1.
    let chunk = (4096 / out.len().max(1)).clamp(64, 1024);
    let mut c0 = 0;
    while c0 < n {
        let cn = chunk.min(n - c0);
        for o in out.iter_mut() {
            o[c0..c0 + cn].fill(0.0);
        }
        for l in 0..k {
            let wr = &w[l * w_rs + c0..l * w_rs + c0 + cn];
            for (i, o) in out.iter_mut().enumerate() {
                let xi = x.data[i * x.rs + l * x.cs];
                for (o, &wv) in o[c0..c0 + cn].iter_mut().zip(wr) {
                    *o = fmadd::<FMA>(xi, wv, *o);
                }
            }
        }
        c0 += cn;
    }
}

/// `out[i, j] = dot(x[i, :], w[j, :])` for a row-major `w` (`n x k`, row stride `w_rs`):
/// each weight row is read from memory once and reused for every row of `x` from L1.
#[inline(always)]
fn rows_dot_body<const FMA: bool>(
    n: usize,
    k: usize,
    x: MatRef<'_>,
    w: &[f32],
    w_rs: usize,
    out: &mut [&mut [f32]],
) {
    const L: usize = 32;
    for j in 0..n {
        let wr = &w[j * w_rs..j * w_rs + k];
        for (i, o) in out.iter_mut().enumerate() {
            let xr = &x.data[i * x.rs..i * x.rs + k];
            // 32 independent lanes: four vector accumulators hide the FMA latency.
            let mut acc = [0f32; L];
            let (wc, xc) = (wr.chunks_exact(L), xr.chunks_exact(L));
            let (wt, xt) = (wc.remainder(), xc.remainder());
            for (a, b) in wc.zip(xc) {
                for l in 0..L {
                    acc[l] = fmadd::<FMA>(a[l], b[l], acc[l]);
                }
            }
            let mut s: f32 = 0.0;
            for (a, b) in wt.iter().zip(xt) {
                s = fmadd::<FMA>(*a, *b, s);
            }
            o[j] = acc.iter().sum::<f32>() + s;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_axpy_avx2(
    n: usize,
    k: usize,
    x: MatRef<'_>,
    w: &[f32],
    w_rs: usize,
    out: &mut [&mut [f32]],
) {
    rows_axpy_body::<true>(n, k, x, w, w_rs, out)
}

/// AVX2 version of [`rows_dot_body`], register-blocked: tiles of up to 3 weight rows x 3
/// input rows, so that each 8-float load feeds 3 FMAs instead of one (the plain
/// version is bound by loads from L1 once several rows share a weight row) and every tile
/// has independent accumulators to hide the FMA latency.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_dot_avx2(
    n: usize,
    k: usize,
    x: MatRef<'_>,
    w: &[f32],
    w_rs: usize,
    out: &mut [&mut [f32]],
) {
    const NB: usize = 3;
    const MB: usize = 3;
    let m = out.len();
    // Every row read by the tiles is `k` long and starts within these bounds.
    assert!(n == 0 || (n - 1) * w_rs + k <= w.len());
    assert!(m == 0 || (m - 1) * x.rs + k <= x.data.len());
    let mut j = 0;
    while j < n {
        let nb = NB.min(n - j);
        let mut i = 0;
        while i < m {
            let mb = MB.min(m - i);
            // Prefetch the weight rows four triples ahead into L2 while this triple is in
            // use, spread over the passes of the input tiles (one row per pass) so that few
            // misses are in flight at once. The hardware prefetcher alone left these loads
            // waiting on DRAM: the LM head at 16 rows ran at 47 GFLOP/s on one core against
            // 77 with the weights in cache; with these prefetches, 58 (one triple ahead into
            // L1: 53).
            let passes = m.div_ceil(MB);
            let pass = i / MB;
            let next = (j + 4 * NB).min(n)..(j + 5 * NB).min(n);
            let pf = if passes < NB {
                if pass == 0 {
                    next
                } else {
                    0..0
                }
            } else if pass < next.len() {
                next.start + pass..next.start + pass + 1
            } else {
                0..0
            };
            let t = Tile {
                j,
                i,
                k,
                x,
                w,
                w_rs,
                pf,
            };
            // SAFETY (all arms): rows j..j+nb of w and i..i+mb of x are in bounds (asserted
            // above); the CPU has AVX2 and FMA (this function's contract).
            unsafe {
                match (nb, mb) {
                    (3, 3) => dot_tile::<3, 3>(t, out),
                    (3, 2) => dot_tile::<3, 2>(t, out),
                    (3, 1) => dot_tile::<3, 1>(t, out),
                    (2, 3) => dot_tile::<2, 3>(t, out),
                    (2, 2) => dot_tile::<2, 2>(t, out),
                    (2, 1) => dot_tile::<2, 1>(t, out),
                    (1, 3) => dot_tile::<1, 3>(t, out),
                    (1, 2) => dot_tile::<1, 2>(t, out),
                    _ => dot_tile::<1, 1>(t, out),
                }
            }
            i += mb;
        }
        j += nb;
    }
}

/// Where one tile of [`rows_dot_avx2`] starts: weight row `j`, input row `i`, `k` long;
/// weight rows `pf` are prefetched along the way.
#[cfg(target_arch = "x86_64")]
struct Tile<'a> {
    j: usize,
    i: usize,
    k: usize,
    x: MatRef<'a>,
    w: &'a [f32],
    w_rs: usize,
    pf: Range<usize>,
}

/// One `NB x MB` tile of [`rows_dot_avx2`]: `out[i + c][j + r] = dot(w row j + r, x row i + c)`.
///
/// # Safety
/// AVX2 and FMA available; rows `j..j + NB` of `w` and `i..i + MB` of `x` hold `k` floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn dot_tile<const NB: usize, const MB: usize>(t: Tile<'_>, out: &mut [&mut [f32]]) {
    let Tile {
        j,
        i,
        k,
        x,
        w,
        w_rs,
        pf,
    } = t;
    use std::arch::x86_64::*;
    let k8 = k / 8 * 8;
    let (wp, xp) = (w.as_ptr(), x.data.as_ptr());
    let mut acc = [[_mm256_setzero_ps(); MB]; NB];
    let mut l = 0;
    while l < k8 {
        if l % 16 == 0 {
            for r in pf.clone() {
                // A hint only: the address is in bounds (rows < n, column l < k).
                _mm_prefetch::<_MM_HINT_T1>(wp.wrapping_add(r * w_rs + l).cast());
            }
        }
        // NB weight vectors stay in registers while the MB input vectors stream past: with
        // the NB * MB accumulators that is 13 of the 16 vector registers, no spills.
        let mut wv = [_mm256_setzero_ps(); NB];
        for (r, v) in wv.iter_mut().enumerate() {
            // SAFETY: in bounds (contract).
            *v = unsafe { _mm256_loadu_ps(wp.add((j + r) * w_rs + l)) };
        }
        for c in 0..MB {
            // SAFETY: in bounds (contract).
            let xc = unsafe { _mm256_loadu_ps(xp.add((i + c) * x.rs + l)) };
            for (accr, wr) in acc.iter_mut().zip(&wv) {
                accr[c] = _mm256_fmadd_ps(*wr, xc, accr[c]);
            }
        }
        l += 8;
    }
    for (r, accr) in acc.iter().enumerate() {
        for (c, a) in accr.iter().enumerate() {
            let mut lanes = [0f32; 8];
            // SAFETY: `lanes` has room for 8 floats.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *a) };
            let mut s = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
                + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
            for t in k8..k {
                s = w[(j + r) * w_rs + t].mul_add(x.data[(i + c) * x.rs + t], s);
            }
            out[i + c][j + r] = s;
        }
    }
}

/// Whether the AVX2 + FMA versions of the kernels can run (checked once, then cached by
/// the standard library).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2_fma() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// `out = x · w` for a few rows of `x` (`out` holds one slice per row, `n` wide; `k` is the
/// depth) on the streaming kernel of `w`'s layout, in the fastest version the CPU runs.
pub(super) fn stream_rows(
    n: usize,
    k: usize,
    x: MatRef<'_>,
    w: Weights<'_>,
    out: &mut [&mut [f32]],
) {
    let input_major = w.layout == WeightLayout::InputMajor;
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked at run time).
        return unsafe {
            if input_major {
                rows_axpy_avx2(n, k, x, w.data, w.rs, out)
            } else {
                rows_dot_avx2(n, k, x, w.data, w.rs, out)
            }
        };
    }
    if input_major {
        rows_axpy_body::<false>(n, k, x, w.data, w.rs, out)
    } else {
        rows_dot_body::<false>(n, k, x, w.data, w.rs, out)
    }
}
