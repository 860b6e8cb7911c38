//! Version 2's coding of expert ids and gate weights: an adaptive context model driving the
//! range coder, reset at every block (request) so that blocks stay self-contained.
//!
//! Each id is coded in gate order, slot by slot, as either
//! - a *hit*: its index in a short candidate list built for the token from (a) the experts
//!   the previous token chose at the same layer (token-to-token re-selection) and (b) the
//!   experts that most often followed, at this layer, the experts this token chose at the
//!   previous entry (layer-to-layer correlation, learnt within the block from pair counts);
//! - or a *miss*: the id through a per-layer adaptive binary tree (order-0 popularity, which
//!   captures the per-layer skew). Models with fewer than [`MIN_EXPERTS_PER_SLOT`] experts
//!   per slot code every id this way.
//!
//! The hit flag is conditioned on the phase, the slot and the hits so far; the index on the
//! phase and the slot. Missing ids (entries flagged with them) cost one adaptive bit per id.
//! Gate weights are coded as their f16 bits, high and low byte through per-slot trees.

use super::super::FormatError;
use super::range_coder::{Bit, Decoder, Encoder};
use super::structure::{Entry, FLAG_MISSING, FLAG_WEIGHTS};
use crate::model::{ModelShape, Phase, MISSING_EXPERT};

const NONE: u16 = u16::MAX;
/// Slots beyond this share the last slot's contexts.
const SLOT_CTX: usize = 8;
const HIT_CTX: usize = 4;
const INDEX_BITS: u32 = 5;
const MAX_CANDIDATES: usize = 1 << INDEX_BITS;
/// Learnt successors offered per expert of the previous entry.
const SUCCESSORS: usize = 2;
/// Largest pair-count table (bytes) a block may use; larger models code without the
/// layer-to-layer candidates.
const MAX_PAIR_TABLE: usize = 1 << 24;
/// Largest total of per-layer id trees; larger models share one tree across layers.
const MAX_TREE_TABLE: usize = 1 << 20;

/// The coder seen from the model: the encoder writes `b` and returns it, the decoder ignores
/// `b` and returns what it reads. One generic model loop serves both, so they cannot drift.
pub(super) trait BitIo {
    /// Whether this side knows the values (the encoder), so that the decoder skips work
    /// whose result it ignores.
    const ENCODES: bool;
    fn bit(&mut self, p: &mut Bit, b: bool) -> bool;
    fn tree(&mut self, t: &mut [Bit], bits: u32, v: u32) -> u32;
}

impl BitIo for Encoder {
    const ENCODES: bool = true;
    #[inline]
    fn bit(&mut self, p: &mut Bit, b: bool) -> bool {
        Encoder::bit(self, p, b);
        b
    }
    #[inline]
    fn tree(&mut self, t: &mut [Bit], bits: u32, v: u32) -> u32 {
        Encoder::tree(self, t, bits, v);
        v
    }
}

impl BitIo for Decoder<'_> {
    const ENCODES: bool = false;
    #[inline]
    fn bit(&mut self, p: &mut Bit, _b: bool) -> bool {
        Decoder::bit(self, p)
    }
    #[inline]
    fn tree(&mut self, t: &mut [Bit], bits: u32, _v: u32) -> u32 {
        Decoder::tree(self, t, bits)
    }
}

/// Within-block counts of (expert at the previous entry, expert at this entry) per layer,
/// with the two successors of each expert of highest lift kept current.
struct Successors {
    e: usize,
    counts: Vec<u8>,
    /// Per layer context and expert: how often it was chosen after an aligned entry.
    pop: Vec<u32>,
    /// Per layer context and previous expert: the best successors and their pair counts
    /// (kept exact: counts change only here), so that ranking reads no other row entry.
    best: Vec<[(u16, u8); SUCCESSORS]>,
}

impl Successors {
    fn new(n_ctx: usize, e: usize) -> Option<Self> {
        let size = n_ctx.checked_mul(e)?.checked_mul(e)?;
        (size <= MAX_PAIR_TABLE).then(|| Self {
            e,
            counts: vec![0; size],
            pop: vec![0; n_ctx * e],
            best: vec![[(NONE, 0); SUCCESSORS]; n_ctx * e],
        })
    }

    #[inline]
    fn update(&mut self, ctx: usize, prev: &[u16], cur: &[u16]) {
        let e = self.e;
        for &x in cur {
            if (x as usize) < e {
                self.pop[ctx * e + x as usize] += 1;
            }
        }
        // Increments first, rankings after: independent increments overlap their cache
        // misses, where interleaved ranking would wait for each.
        for &p in prev {
            if (p as usize) < e {
                let row = &mut self.counts[(ctx * e + p as usize) * e..][..e];
                for &x in cur {
                    if let Some(c) = row.get_mut(x as usize) {
                        *c = c.saturating_add(1);
                    }
                }
            }
        }
        let pop = &self.pop[ctx * e..(ctx + 1) * e];
        for &p in prev {
            if p as usize >= e {
                continue;
            }
            let row = &self.counts[(ctx * e + p as usize) * e..][..e];
            let best = &mut self.best[ctx * e + p as usize];
            for &x in cur {
                let Some(&cx8) = row.get(x as usize) else {
                    continue;
                };
                // Rank by lift (count squared over popularity), so that the candidates add
                // what the per-layer popularity does not already know. Compared by cross
                // multiplication: this runs top_k^2 times per token.
                let cx = u64::from(cx8);
                let px = u64::from(pop[x as usize]) + LIFT_PRIOR;
                let beats = |(y, cy): (u16, u8)| {
                    y == NONE || {
                        let cy = u64::from(cy);
                        let py = u64::from(pop[y as usize]) + LIFT_PRIOR;
                        cx * cx * py > cy * cy * px
                    }
                };
                if best[0].0 == x {
                    best[0].1 = cx8;
                    continue;
                }
                if best[1].0 == x {
                    best[1].1 = cx8;
                } else if beats(best[1]) {
                    best[1] = (x, cx8);
                }
                if best[1].0 == x && beats(best[0]) {
                    best.swap(0, 1);
                }
            }
        }
    }
}

const LIFT_PRIOR: u64 = 8;

/// Candidates are used only with at least this many experts per slot. With fewer, the list
/// would cover a large share of the experts, and an index into it costs more than the
/// popularity tree's code for the same expert: Mixtral's example file (8 experts, top-2)
/// codes 15.6x smaller than JSON without candidates, 13.8x with them.
const MIN_EXPERTS_PER_SLOT: usize = 12;

/// The adaptive state of one block.
pub(super) struct RoutingModel {
    /// Whether ids may be coded as hits in a candidate list (see [`MIN_EXPERTS_PER_SLOT`]).
    candidates: bool,
    num_experts: usize,
    id_bits: u32,
    /// Ascending MoE layer ids: a layer's context is its position here.
    moe_layers: Vec<usize>,
    per_layer_trees: bool,
    id_trees: Vec<Bit>,
    hit: Vec<Bit>,
    index: Vec<Bit>,
    missing: Bit,
    w_hi: Vec<Bit>,
    w_lo: Vec<Bit>,
    succ: Option<Successors>,
    /// Per layer context: the last token's selection.
    last: Vec<Vec<u16>>,
    stamp: Vec<u32>,
    generation: u32,
    cand: Vec<u16>,
}

fn corrupt(what: &str) -> FormatError {
    FormatError::Layout(format!(
        "request block: {what} out of range (corrupt block)"
    ))
}

impl RoutingModel {
    pub fn new(shape: &ModelShape) -> Self {
        let e = shape.num_experts.max(1);
        let id_bits = usize::BITS - (e - 1).leading_zeros();
        let n_ctx = shape.moe_layers.len().max(1);
        let per_layer_trees = (n_ctx << id_bits) <= MAX_TREE_TABLE;
        let trees = if per_layer_trees { n_ctx } else { 1 };
        Self {
            num_experts: e,
            id_bits,
            moe_layers: shape.moe_layers.clone(),
            per_layer_trees,
            id_trees: vec![Bit::default(); trees << id_bits],
            hit: vec![Bit::default(); 2 * SLOT_CTX * HIT_CTX],
            index: vec![Bit::default(); 2 * SLOT_CTX * MAX_CANDIDATES],
            missing: Bit::default(),
            w_hi: vec![Bit::default(); SLOT_CTX * 256],
            w_lo: vec![Bit::default(); SLOT_CTX * 256],
            candidates: e >= MIN_EXPERTS_PER_SLOT * shape.top_k,
            succ: (e >= MIN_EXPERTS_PER_SLOT * shape.top_k)
                .then(|| Successors::new(n_ctx, e))
                .flatten(),
            last: vec![Vec::new(); n_ctx],
            stamp: vec![0; e],
            generation: 0,
            cand: Vec::with_capacity(MAX_CANDIDATES),
        }
    }

    fn candidates(&mut self, ctx: usize, prev: Option<&[u16]>) {
        self.cand.clear();
        if !self.candidates {
            return;
        }
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.stamp.fill(0);
            self.generation = 1;
        }
        let Self {
            last,
            succ,
            stamp,
            cand,
            generation,
            num_experts,
            ..
        } = self;
        let (g, e) = (*generation, *num_experts);
        let mut push = |x: u16| {
            let i = x as usize;
            if i < e && stamp[i] != g && cand.len() < MAX_CANDIDATES {
                stamp[i] = g;
                cand.push(x);
            }
        };
        for &x in &last[ctx] {
            push(x);
        }
        if let (Some(prev), Some(s)) = (prev, succ.as_ref()) {
            let rows = &s.best[ctx * s.e..(ctx + 1) * s.e];
            for j in 0..SUCCESSORS {
                for &p in prev {
                    if let Some(b) = rows.get(p as usize) {
                        push(b[j].0);
                    }
                }
            }
        }
    }

    fn code_token<C: BitIo>(
        &mut self,
        c: &mut C,
        decode: usize,
        ctx: usize,
        flags: u8,
        cur: &mut [u16],
    ) -> Result<(), FormatError> {
        let mut hits = 0usize;
        for (s, slot) in cur.iter_mut().enumerate() {
            let sc = decode * SLOT_CTX + s.min(SLOT_CTX - 1);
            if flags & FLAG_MISSING != 0 && c.bit(&mut self.missing, *slot == MISSING_EXPERT) {
                *slot = MISSING_EXPERT;
                continue;
            }
            if !self.cand.is_empty() {
                let pos = if C::ENCODES {
                    self.cand.iter().position(|&x| x == *slot)
                } else {
                    None
                };
                let h = &mut self.hit[sc * HIT_CTX + hits.min(HIT_CTX - 1)];
                if c.bit(h, pos.is_some()) {
                    let tree = &mut self.index[sc * MAX_CANDIDATES..(sc + 1) * MAX_CANDIDATES];
                    let i = c.tree(tree, INDEX_BITS, pos.unwrap_or(0) as u32) as usize;
                    *slot = *self.cand.get(i).ok_or_else(|| corrupt("candidate index"))?;
                    // A token selects an expert once: later slots index the rest.
                    self.cand.remove(i);
                    hits += 1;
                    continue;
                }
            }
            let n = 1usize << self.id_bits;
            let base = if self.per_layer_trees { ctx * n } else { 0 };
            let tree = &mut self.id_trees[base..base + n];
            let v = c.tree(tree, self.id_bits, u32::from(*slot));
            if v as usize >= self.num_experts {
                return Err(corrupt("expert id"));
            }
            *slot = v as u16;
        }
        Ok(())
    }

    fn code_weights<C: BitIo>(&mut self, c: &mut C, w: &mut [u16]) {
        for (s, x) in w.iter_mut().enumerate() {
            let sc = s.min(SLOT_CTX - 1) * 256;
            let hi = c.tree(&mut self.w_hi[sc..sc + 256], 8, u32::from(*x >> 8));
            let lo = c.tree(&mut self.w_lo[sc..sc + 256], 8, u32::from(*x & 0xff));
            *x = ((hi << 8) | lo) as u16;
        }
    }

    /// Codes (encodes or decodes, by `C`) all ids of a request in entry order, and the f16
    /// bits of the gate weights of the entries flagged with them. On decode, `experts` and
    /// `weights` are overwritten; their sizes come from the skeleton.
    pub fn code_request<C: BitIo>(
        &mut self,
        c: &mut C,
        iterations: &[(Phase, usize)],
        entries: &[Entry],
        experts: &mut [u16],
        weights: &mut [u16],
    ) -> Result<(), FormatError> {
        let (mut at, mut wat, mut ei) = (0usize, 0usize, 0usize);
        for &(phase, n) in iterations {
            let decode = usize::from(phase == Phase::Decode);
            // The previous entry of this iteration: (first id, ids, top-k).
            let mut prev: Option<(usize, usize, usize)> = None;
            let group = entries
                .get(ei..ei + n)
                .ok_or_else(|| corrupt("entry count"))?;
            for entry in group {
                // Layers outside the MoE list (a reader validates them later) share the
                // first context.
                let ctx = self
                    .moe_layers
                    .binary_search(&(entry.layer as usize))
                    .unwrap_or(0);
                let k = entry.top_k as usize;
                let tokens = entry.ids.checked_div(k).unwrap_or(0);
                let aligned = prev.filter(|&(_, ids, pk)| pk > 0 && ids / pk == tokens);
                let with_w = entry.flags & FLAG_WEIGHTS != 0;
                for t in 0..tokens {
                    let s0 = at + t * k;
                    let (before, rest) = experts.split_at_mut(s0);
                    let cur = &mut rest[..k];
                    let prev_sel =
                        aligned.map(|(p0, _, pk)| &before[p0 + t * pk..p0 + (t + 1) * pk]);
                    self.candidates(ctx, prev_sel);
                    self.code_token(c, decode, ctx, entry.flags, cur)?;
                    if with_w {
                        self.code_weights(c, &mut weights[wat + t * k..wat + (t + 1) * k]);
                    }
                    let last = &mut self.last[ctx];
                    last.clear();
                    last.extend_from_slice(cur);
                    if let (Some(p), Some(s)) = (prev_sel, &mut self.succ) {
                        s.update(ctx, p, cur);
                    }
                }
                prev = Some((at, entry.ids, k));
                at += entry.ids;
                if with_w {
                    wat += entry.ids;
                }
            }
            ei += n;
        }
        Ok(())
    }
}
