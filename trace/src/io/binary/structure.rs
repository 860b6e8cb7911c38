//! The request's skeleton columns, shared by format versions 1 and 2: metadata, iterations,
//! and per layer entry its layer id, top-k, token count and flags. Everything but the expert
//! ids and gate weights.

use super::super::varint;
use super::super::FormatError;
use crate::model::{LayerRouting, Phase, RequestTrace, MISSING_EXPERT};

/// Entry flag: gate weights present.
pub(super) const FLAG_WEIGHTS: u8 = 1;
/// Entry flag: some ids are [`MISSING_EXPERT`].
pub(super) const FLAG_MISSING: u8 = 2;

pub(super) fn entry_flags(l: &LayerRouting) -> u8 {
    let mut f = 0u8;
    if l.weights.is_some() {
        f |= FLAG_WEIGHTS;
    }
    if l.experts.contains(&MISSING_EXPERT) {
        f |= FLAG_MISSING;
    }
    f
}

/// One layer entry of the skeleton.
#[derive(Debug, Clone, Copy)]
pub(super) struct Entry {
    pub layer: u32,
    pub top_k: u16,
    /// Expert ids of the entry (tokens x top_k).
    pub ids: usize,
    pub flags: u8,
}

/// A request without its expert ids and gate weights.
#[derive(Debug)]
pub(super) struct Skeleton {
    pub id: String,
    pub workload: Option<String>,
    pub prompt_len: usize,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    /// Phase and entry count of each iteration.
    pub iterations: Vec<(Phase, usize)>,
    pub entries: Vec<Entry>,
}

impl Skeleton {
    pub fn total_ids(&self) -> usize {
        self.entries.iter().map(|e| e.ids).sum()
    }

    /// Ids that carry a gate weight: one weight is stored per such id.
    pub fn total_weights(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.flags & FLAG_WEIGHTS != 0)
            .map(|e| e.ids)
            .sum()
    }
}

/// Appends the skeleton columns of `r`.
pub(super) fn encode(r: &RequestTrace, out: &mut Vec<u8>) {
    let flags = u8::from(r.workload.is_some())
        | (u8::from(r.started_ms.is_some()) << 1)
        | (u8::from(r.finished_ms.is_some()) << 2);
    out.push(flags);
    varint::put(out, r.id.len() as u64);
    out.extend_from_slice(r.id.as_bytes());
    if let Some(w) = &r.workload {
        varint::put(out, w.len() as u64);
        out.extend_from_slice(w.as_bytes());
    }
    varint::put(out, r.prompt_len as u64);
    for t in [r.started_ms, r.finished_ms].into_iter().flatten() {
        varint::put(out, t);
    }
    varint::put(out, r.iterations.len() as u64);
    out.extend(r.iterations.iter().map(|it| match it.phase {
        Phase::Prefill => 0u8,
        Phase::Decode => 1u8,
    }));
    for it in &r.iterations {
        varint::put(out, it.layers.len() as u64);
    }
    let entries = || r.iterations.iter().flat_map(|it| it.layers.iter());
    for l in entries() {
        varint::put(out, u64::from(l.layer));
    }
    for l in entries() {
        varint::put(out, u64::from(l.top_k));
    }
    for l in entries() {
        varint::put(out, l.num_tokens() as u64);
    }
    out.extend(entries().map(entry_flags));
}

pub(super) struct Cursor<'a> {
    pub b: &'a [u8],
    pub p: usize,
}

impl<'a> Cursor<'a> {
    pub fn err(&self, what: &str) -> FormatError {
        FormatError::Layout(format!(
            "request block: bad or missing {what} at payload byte {}",
            self.p
        ))
    }
    pub fn num(&mut self, what: &str) -> Result<usize, FormatError> {
        let v = varint::get(self.b, &mut self.p).ok_or_else(|| self.err(what))?;
        usize::try_from(v).map_err(|_| self.err(what))
    }
    fn u64(&mut self, what: &str) -> Result<u64, FormatError> {
        varint::get(self.b, &mut self.p).ok_or_else(|| self.err(what))
    }
    pub fn bytes(&mut self, n: usize, what: &str) -> Result<&'a [u8], FormatError> {
        let end = self.p.checked_add(n).filter(|&e| e <= self.b.len());
        let end = end.ok_or_else(|| self.err(what))?;
        let s = &self.b[self.p..end];
        self.p = end;
        Ok(s)
    }
    fn string(&mut self, what: &str) -> Result<String, FormatError> {
        let n = self.num(what)?;
        let b = self.bytes(n, what)?;
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| self.err(what))
    }
    pub fn remaining(&self) -> usize {
        self.b.len() - self.p
    }
}

/// Reads the skeleton columns. `max_ids` bounds the total number of expert ids the block may
/// claim (the caller derives it from the bytes that must hold them), so a corrupt count is an
/// error, never a huge allocation.
pub(super) fn decode(c: &mut Cursor<'_>, max_ids: usize) -> Result<Skeleton, FormatError> {
    let flags = c.bytes(1, "metadata flags")?[0];
    let id = c.string("id")?;
    let workload = if flags & 1 != 0 {
        Some(c.string("workload")?)
    } else {
        None
    };
    let prompt_len = c.num("prompt_len")?;
    let started_ms = if flags & 2 != 0 {
        Some(c.u64("started_ms")?)
    } else {
        None
    };
    let finished_ms = if flags & 4 != 0 {
        Some(c.u64("finished_ms")?)
    } else {
        None
    };
    let n_iter = c.num("iteration count")?;
    if n_iter > c.remaining() {
        return Err(c.err("iteration count"));
    }
    let phases = c.bytes(n_iter, "phases")?;
    let mut iterations = Vec::with_capacity(n_iter);
    let mut n_entries = 0usize;
    for &ph in phases {
        let phase = match ph {
            0 => Phase::Prefill,
            1 => Phase::Decode,
            _ => return Err(c.err("phase")),
        };
        let n = c.num("layers per iteration")?;
        n_entries = n_entries
            .checked_add(n)
            .filter(|&t| t <= c.b.len())
            .ok_or_else(|| c.err("layers per iteration"))?;
        iterations.push((phase, n));
    }
    let mut entries = Vec::with_capacity(n_entries);
    for _ in 0..n_entries {
        let l = c.num("layer id")?;
        entries.push(Entry {
            layer: u32::try_from(l).map_err(|_| c.err("layer id"))?,
            top_k: 0,
            ids: 0,
            flags: 0,
        });
    }
    for e in &mut entries {
        let k = c.num("top_k")?;
        e.top_k = u16::try_from(k).map_err(|_| c.err("top_k"))?;
    }
    let mut total = 0usize;
    for e in &mut entries {
        let t = c.num("token count")?;
        e.ids = t
            .checked_mul(e.top_k as usize)
            .filter(|&n| n <= max_ids)
            .ok_or_else(|| c.err("token count"))?;
        total = total
            .checked_add(e.ids)
            .filter(|&n| n <= max_ids)
            .ok_or_else(|| c.err("token count (more ids than the block can hold)"))?;
    }
    let flags = c.bytes(n_entries, "layer flags")?;
    for (e, &f) in entries.iter_mut().zip(flags) {
        e.flags = f;
    }
    Ok(Skeleton {
        id,
        workload,
        prompt_len,
        started_ms,
        finished_ms,
        iterations,
        entries,
    })
}

impl Skeleton {
    /// Rebuilds the request from the skeleton and its ids (and weights for the entries
    /// flagged with them), both in entry order.
    pub fn assemble(self, experts: &[u16], weights: &[f32]) -> RequestTrace {
        let mut entries = self.entries.into_iter();
        let (mut at, mut wat) = (0usize, 0usize);
        let iterations = self
            .iterations
            .iter()
            .map(|&(phase, n)| crate::model::Iteration {
                phase,
                layers: entries
                    .by_ref()
                    .take(n)
                    .map(|e| {
                        let ex = experts[at..at + e.ids].to_vec();
                        at += e.ids;
                        let w = (e.flags & FLAG_WEIGHTS != 0).then(|| {
                            let w = weights[wat..wat + e.ids].to_vec();
                            wat += e.ids;
                            w
                        });
                        LayerRouting {
                            layer: e.layer,
                            top_k: e.top_k,
                            experts: ex,
                            weights: w,
                        }
                    })
                    .collect(),
            })
            .collect();
        RequestTrace {
            id: self.id,
            workload: self.workload,
            prompt_len: self.prompt_len,
            started_ms: self.started_ms,
            finished_ms: self.finished_ms,
            iterations,
        }
    }
}
