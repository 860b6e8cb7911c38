//! SwiGLU feed-forward blocks over groups of rows (routed experts, or one dense MLP): the
//! gate and up projections, the activation and routing weight fused in place, the down
//! projection, each split into (group, column block) tasks.

use std::ops::Range;

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::avx2::has_avx2_fma;
use super::gemm::matmul_block;
use super::{col_blocks, exp, Dst, MatRef, OutPtr, Scratch, WeightLayout, Weights, SERIAL_MACS};

/// The weights of one SwiGLU block as f32 slices: `gate_up [hidden, 2F]` (gate columns first)
/// and `down [F, hidden]`, both row-major.
#[derive(Clone, Copy)]
pub(crate) struct SwiGluRef<'a> {
    pub gate_up: &'a [f32],
    pub down: &'a [f32],
}

/// Rows `rows` of the (gathered) input go through `ffn`.
#[derive(Clone)]
pub(crate) struct GroupWork<'a> {
    pub ffn: SwiGluRef<'a>,
    pub rows: Range<usize>,
}

/// `silu(x) = x / (1 + e^-x)`, as the reference computes it.
#[inline(always)]
fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// `g = silu(g) * u * s`, element-wise.
#[inline(always)]
fn silu_mul_body(g: &mut [f32], u: &[f32], s: f32) {
    for (gi, ui) in g.iter_mut().zip(u) {
        *gi = silu(*gi) * ui * s;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_mul_avx2(g: &mut [f32], u: &[f32], s: f32) {
    silu_mul_body(g, u, s)
}

fn silu_mul(g: &mut [f32], u: &[f32], s: f32) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked at run time).
        return unsafe { silu_mul_avx2(g, u, s) };
    }
    silu_mul_body(g, u, s)
}

/// SwiGLU over groups of rows: for each group, rows `rows` of `x [A, hidden]` go through its
/// block, and row `r` of the result `[A, hidden]` is scaled by `scale[r]` when given (applied
/// to the activation before the down projection, which is the same by linearity). `A` is
/// the largest row end; the groups must cover `0..A` (rows outside every group come back
/// unspecified).
///
/// Work is split into (group, column block) tasks so that both many small groups (routed
/// experts at large batch) and one big group (a dense MLP, one busy expert) keep every
/// thread busy.
pub(crate) fn grouped_swiglu<'w>(
    x: &[f32],
    groups: &[GroupWork<'w>],
    hidden: usize,
    ffn: usize,
    scale: Option<&[f32]>,
) -> Scratch {
    let a = groups.iter().map(|g| g.rows.end).max().unwrap_or(0);
    let (h, f2) = (hidden, 2 * ffn);
    // Every element of both is written below: each (row, column) by exactly one task.
    let mut act = Scratch::take(a * f2);
    let mut y = Scratch::take(a * h);
    if a == 0 {
        return y;
    }
    let total_macs = a * h * f2;
    let threads = rayon::current_num_threads();
    let serial = total_macs < SERIAL_MACS || threads == 1;
    // (group index, column block) tasks, biggest groups first for balance.
    type Task = (usize, Range<usize>);
    let tasks = |cols: usize| -> Vec<Task> {
        let mut order: Vec<usize> = (0..groups.len()).collect();
        order.sort_by_key(|&g| std::cmp::Reverse(groups[g].rows.len()));
        let mut t = Vec::new();
        for g in order {
            let n = groups[g].rows.len();
            if n == 0 {
                continue;
            }
            // A group's share of all rows, in units of 1 / (2 * threads).
            let parts = if serial {
                1
            } else {
                (n * 2 * threads).div_ceil(a).max(1)
            };
            t.extend(col_blocks(cols, parts).into_iter().map(|c| (g, c)));
        }
        t
    };
    let for_tasks = |t: Vec<Task>, f: &(dyn Fn(&Task) + Sync)| {
        if serial {
            t.iter().for_each(f);
        } else {
            t.par_iter().for_each(f);
        }
    };

    let project = |p: Projection<'_, 'w>| {
        for_tasks(tasks(p.width), &|(g, c)| {
            // SAFETY: tasks cover disjoint (rows, columns) blocks of the projection's output.
            unsafe { p.block(&groups[*g], c) };
        })
    };

    // Gate and up projections: act[rows, 0..2F] = x[rows] · gate_up.
    project(Projection {
        input: x,
        in_rs: h,
        k: h,
        out: OutPtr::new(&mut act),
        width: f2,
        weight: |f| f.gate_up,
    });

    // silu(gate) * up * scale, written over the gate half of each row.
    let fuse = |(r, row): (usize, &mut [f32])| {
        let s = scale.map_or(1.0, |s| s[r]);
        let (g, u) = row.split_at_mut(ffn);
        silu_mul(g, u, s);
    };
    if serial {
        act.chunks_mut(f2).enumerate().for_each(fuse);
    } else {
        act.par_chunks_mut(f2).enumerate().for_each(fuse);
    }

    // Down projection: y[rows] = act[rows, 0..F] · down.
    project(Projection {
        input: &act,
        in_rs: f2,
        k: ffn,
        out: OutPtr::new(&mut y),
        width: h,
        weight: |f| f.down,
    });
    y
}

/// One projection of a grouped SwiGLU, `out[rows] = input[rows, 0..k] · w` for each group's
/// rows and input-major weight `w`, which is as wide as `out`.
struct Projection<'a, 'w> {
    input: &'a [f32],
    /// Stride between input rows.
    in_rs: usize,
    /// Input columns read: the weight's rows.
    k: usize,
    out: OutPtr,
    /// Output columns: the weight's columns and the stride between output rows.
    width: usize,
    /// Which of a group's weights this projection reads.
    weight: fn(&SwiGluRef<'w>) -> &'w [f32],
}

impl<'w> Projection<'_, 'w> {
    /// Columns `cols` of the output rows of group `gw`.
    ///
    /// # Safety
    /// No other thread may touch those rows and columns of the output during the call.
    #[inline]
    unsafe fn block(&self, gw: &GroupWork<'w>, cols: &Range<usize>) {
        let rows = &gw.rows;
        let lhs = MatRef {
            data: &self.input[rows.start * self.in_rs..rows.end * self.in_rs],
            rs: self.in_rs,
            cs: 1,
        };
        let dst = Dst {
            out: self.out,
            off: rows.start * self.width + cols.start,
            rs: self.width,
        };
        let w = Weights {
            data: &(self.weight)(&gw.ffn)[cols.start..],
            rs: self.width,
            layout: WeightLayout::InputMajor,
        };
        // SAFETY: forwarded contract.
        unsafe { matmul_block(dst, rows.len(), cols.len(), self.k, lhs, w) };
    }
}
