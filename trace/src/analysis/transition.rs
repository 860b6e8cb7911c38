//! Conditional selection matrices: P(expert j at the next step | expert i now), where the next
//! step is the next MoE layer of the same token (paper observation 1) or the same layer of the
//! next decode token of the same request (observation 2). Needs per-token data.
//!
//! Counting: a token with experts S at the first step and T at the second adds one to every
//! cell (i, j), i in S, j in T. Row i normalised is P(j | i). The coverage of a row is the mass
//! of its `ceil(fraction * E)` largest cells; a matrix's coverage is the row-count-weighted mean.

use serde::{Deserialize, Serialize};

use super::counters::{Counters, RowBatch};
use super::stats::top_count;
use crate::MISSING_EXPERT;

/// Most tokens grouped at once: keeps [`RowBatch`]'s u32 indices far from overflow.
pub(crate) const MAX_CHUNK: usize = 1 << 24;

/// E x E counters for each of `slots` step pairs, flat so that the per-token update is an
/// index computation and an add.
#[derive(Debug, Clone, PartialEq)]
pub struct TransitionCounts {
    pub num_experts: usize,
    /// Per slot, row (from-expert) major.
    cells: Counters,
    /// Tokens (or token pairs) that contributed, per slot.
    pub observations: Vec<u64>,
}

impl TransitionCounts {
    /// `top_k` bounds how much one token can add to a cell (top_k² with repeated experts).
    pub fn new(slots: usize, num_experts: usize, top_k: usize) -> Self {
        Self {
            num_experts,
            cells: Counters::new(slots, num_experts * num_experts, top_k * top_k),
            observations: vec![0; slots],
        }
    }

    pub fn slots(&self) -> usize {
        self.observations.len()
    }

    /// Tokens `0..n`, `pair(t)` giving token `t`'s selection at the first step and at the
    /// second. Missing experts are skipped; a token missing entirely at either step is not
    /// an observation. Updates go row by row (see [`RowBatch`]).
    pub fn add_batch<'a>(
        &mut self,
        slot: usize,
        n: usize,
        pair: impl Fn(usize) -> (&'a [u16], &'a [u16]),
        scratch: &mut RowBatch,
    ) {
        let e = self.num_experts;
        let chunk = self.cells.max_batch().clamp(1, MAX_CHUNK);
        let mut start = 0;
        while start < n {
            let end = (start + chunk).min(n);
            scratch.group(e, end - start, |t| pair(start + t).0);
            let table = self.cells.observe(slot, end - start);
            for i in 0..e {
                let tokens = scratch.row(i);
                if tokens.is_empty() {
                    continue;
                }
                let row = &mut table[i * e..(i + 1) * e];
                for &t in tokens {
                    for &j in pair(start + t as usize).1 {
                        if j != MISSING_EXPERT {
                            row[j as usize] += 1;
                        }
                    }
                }
            }
            let valid = |s: &[u16]| s.iter().any(|&x| x != MISSING_EXPERT);
            self.observations[slot] += (start..end)
                .filter(|&t| {
                    let (a, b) = pair(t);
                    valid(a) && valid(b)
                })
                .count() as u64;
            start = end;
        }
    }

    pub fn merge(&mut self, other: &TransitionCounts) {
        self.cells.merge(&other.cells);
        self.observations
            .iter_mut()
            .zip(&other.observations)
            .for_each(|(a, b)| *a += b);
    }

    /// The E x E counts of one slot, row-major.
    pub fn slot(&self, slot: usize) -> Vec<u64> {
        self.cells.block(slot)
    }
}

/// Coverage of one matrix.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Coverage {
    /// Sum over rows of their top-candidate mass.
    covered: f64,
    /// Sum over rows of their total.
    total: f64,
    /// Same for the "independent" matrix whose rows are all the column marginal.
    marginal_covered: f64,
}

fn coverage(table: &[u64], e: usize, candidates: usize) -> Coverage {
    let mut c = Coverage::default();
    let mut row_buf = vec![0u64; e];
    let mut columns = vec![0u64; e];
    for i in 0..e {
        let row = &table[i * e..(i + 1) * e];
        let total: u64 = row.iter().sum();
        if total == 0 {
            continue;
        }
        row_buf.copy_from_slice(row);
        row_buf.sort_unstable_by(|a, b| b.cmp(a));
        c.covered += row_buf[..candidates].iter().sum::<u64>() as f64;
        c.total += total as f64;
        columns.iter_mut().zip(row).for_each(|(a, b)| *a += b);
    }
    if c.total > 0.0 {
        columns.sort_unstable_by(|a, b| b.cmp(a));
        let share = columns[..candidates].iter().sum::<u64>() as f64 / c.total;
        c.marginal_covered = share * c.total;
    }
    c
}

/// Coverage of one step pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepCoverage {
    /// The layer of the first step.
    pub from_layer: usize,
    /// The layer of the second step (equal to `from_layer` for token-level statistics).
    pub to_layer: usize,
    /// Tokens (token pairs) that contributed.
    pub observations: u64,
    /// Share of P(. | i) in the top candidates, weighted over rows i; `None` without data.
    pub coverage: Option<f64>,
    /// The same if the next step ignored the current one (every row equal to the next step's
    /// marginal): how much of `coverage` skew alone explains.
    pub independent_coverage: Option<f64>,
}

/// A full matrix, for plots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransitionMatrix {
    pub from_layer: usize,
    pub to_layer: usize,
    pub num_experts: usize,
    /// Row-major counts; row i / its sum is P(. | i).
    pub counts: Vec<u64>,
}

/// Layer- or token-level transition statistics of one phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransitionReport {
    /// Share of the candidates counted as "top" (0.2 in the paper).
    pub top_fraction: f64,
    /// `ceil(top_fraction * E)`.
    pub candidates: usize,
    /// `candidates / E`: the coverage if every next expert were equally likely.
    pub uniform_coverage: f64,
    /// Row-count-weighted coverage over all step pairs.
    pub coverage: Option<f64>,
    pub independent_coverage: Option<f64>,
    /// Lowest and highest per-pair coverage.
    pub min_coverage: Option<f64>,
    pub max_coverage: Option<f64>,
    pub steps: Vec<StepCoverage>,
    /// The matrix of the middle step pair with data.
    pub representative: Option<TransitionMatrix>,
}

/// `layers[s]` gives the (from, to) layer ids of slot `s`.
pub fn report(
    counts: &TransitionCounts,
    layers: &[(usize, usize)],
    top_fraction: f64,
) -> Option<TransitionReport> {
    let e = counts.num_experts;
    let candidates = top_count(top_fraction, e);
    let mut all = Coverage::default();
    let mut steps = Vec::with_capacity(counts.slots());
    for (s, &(from, to)) in layers.iter().enumerate().take(counts.slots()) {
        let c = coverage(&counts.slot(s), e, candidates);
        all.covered += c.covered;
        all.total += c.total;
        all.marginal_covered += c.marginal_covered;
        let ratio = |x: f64| (c.total > 0.0).then(|| x / c.total);
        steps.push(StepCoverage {
            from_layer: from,
            to_layer: to,
            observations: counts.observations[s],
            coverage: ratio(c.covered),
            independent_coverage: ratio(c.marginal_covered),
        });
    }
    if all.total == 0.0 {
        return None;
    }
    let with_data: Vec<usize> = (0..steps.len())
        .filter(|&s| steps[s].coverage.is_some())
        .collect();
    let representative = with_data
        .get(with_data.len() / 2)
        .map(|&s| TransitionMatrix {
            from_layer: steps[s].from_layer,
            to_layer: steps[s].to_layer,
            num_experts: e,
            counts: counts.slot(s),
        });
    let covs = steps.iter().filter_map(|s| s.coverage);
    Some(TransitionReport {
        top_fraction,
        candidates,
        uniform_coverage: candidates as f64 / e as f64,
        coverage: Some(all.covered / all.total),
        independent_coverage: Some(all.marginal_covered / all.total),
        min_coverage: covs.clone().min_by(f64::total_cmp),
        max_coverage: covs.max_by(f64::total_cmp),
        steps,
        representative,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One token at a time, as a batch of one.
    trait AddOne {
        fn add(&mut self, slot: usize, from: &[u16], to: &[u16]);
    }
    impl AddOne for TransitionCounts {
        fn add(&mut self, slot: usize, from: &[u16], to: &[u16]) {
            self.add_batch(slot, 1, |_| (from, to), &mut RowBatch::default());
        }
    }

    #[test]
    fn deterministic_successor_covers_everything() {
        // E = 5, one candidate in the top 20%: if expert i is always followed by i+1, each row
        // has all its mass in one cell.
        let mut t = TransitionCounts::new(1, 5, 1);
        for i in 0..5u16 {
            for _ in 0..=i {
                t.add(0, &[i], &[(i + 1) % 5]);
            }
        }
        t.add(0, &[MISSING_EXPERT], &[1]);
        let r = report(&t, &[(3, 4)], 0.2).unwrap();
        assert_eq!(r.candidates, 1);
        assert_eq!(r.coverage, Some(1.0));
        assert_eq!(t.observations[0], 15);
        // Independent coverage: the most frequent next expert (0, after 4: 5 times) of 15.
        assert!((r.independent_coverage.unwrap() - 5.0 / 15.0).abs() < 1e-12);
        assert_eq!(r.representative.as_ref().unwrap().from_layer, 3);
    }

    #[test]
    fn uniform_successor_covers_the_uniform_share() {
        let mut t = TransitionCounts::new(2, 10, 1);
        for i in 0..10u16 {
            for j in 0..10u16 {
                t.add(1, &[i], &[j]);
            }
        }
        let r = report(&t, &[(0, 1), (1, 2)], 0.2).unwrap();
        assert!((r.coverage.unwrap() - 0.2).abs() < 1e-12);
        assert_eq!(r.steps[0].coverage, None);
        assert_eq!(r.representative.unwrap().from_layer, 1);
        assert!(report(&TransitionCounts::new(1, 4, 1), &[(0, 1)], 0.2).is_none());
    }

    #[test]
    fn merge_adds() {
        let mut a = TransitionCounts::new(1, 3, 2);
        let mut b = TransitionCounts::new(1, 3, 2);
        a.add(0, &[0, 1], &[2]);
        b.add(0, &[0], &[2, 1]);
        a.merge(&b);
        assert_eq!(a.slot(0), &[0, 1, 2, 0, 0, 1, 0, 0, 0]);
        assert_eq!(a.observations, vec![2]);
    }
}
