//! Per-layer expert loads and co-activation counts: the aggregate that the analysis reports
//! and the placement planners plan from, built from any [`TraceItem`].

use serde::{Deserialize, Serialize};

use crate::model::{CountsTrace, ModelShape, Phase, TraceItem, TraceModelError, MISSING_EXPERT};

/// Loads of one MoE layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerLoad {
    pub layer: usize,
    /// (token, expert) selections per expert.
    pub counts: Vec<u64>,
    /// Tokens seen at this layer (0 for aggregate sources, which do not say).
    pub tokens: u64,
    /// Tokens that selected both experts of a pair, upper triangle `i < j` flattened by
    /// [`pair_index`]; `None` unless pairs were asked for.
    pub pairs: Option<Vec<u64>>,
}

/// Index of the unordered pair `(i, j)`, `i != j`, in a flattened upper triangle over `n`
/// experts.
pub fn pair_index(i: usize, j: usize, n: usize) -> usize {
    let (a, b) = if i < j { (i, j) } else { (j, i) };
    a * (2 * n - a - 1) / 2 + (b - a - 1)
}

impl LayerLoad {
    fn new(layer: usize, num_experts: usize, pairs: bool) -> Self {
        Self {
            layer,
            counts: vec![0; num_experts],
            tokens: 0,
            pairs: pairs.then(|| vec![0; num_experts * num_experts.saturating_sub(1) / 2]),
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Count of the pair `(i, j)`, when pairs were recorded.
    pub fn pair(&self, i: usize, j: usize) -> Option<u64> {
        let n = self.counts.len();
        self.pairs.as_ref().map(|p| p[pair_index(i, j, n)])
    }

    fn merge(&mut self, other: &LayerLoad) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.tokens += other.tokens;
        match (&mut self.pairs, &other.pairs) {
            (Some(a), Some(b)) => a.iter_mut().zip(b).for_each(|(a, b)| *a += b),
            (a @ Some(_), None) => *a = None,
            _ => {}
        }
    }
}

/// Loads of every MoE layer in one phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseLoad {
    /// One entry per MoE layer of the shape, in `moe_layers` order.
    pub layers: Vec<LayerLoad>,
    /// Whether any of it came from per-token data.
    pub per_token: bool,
    /// Whether any of it came from aggregate counts (then `tokens` and `pairs` undercount and
    /// per-token statistics are not available).
    pub aggregate: bool,
}

impl PhaseLoad {
    fn new(shape: &ModelShape, pairs: bool) -> Self {
        Self {
            layers: shape
                .moe_layers
                .iter()
                .map(|&l| LayerLoad::new(l, shape.num_experts, pairs))
                .collect(),
            per_token: false,
            aggregate: false,
        }
    }

    /// Aggregate loads with one layer per row (layer ids 0..), for tests.
    #[cfg(test)]
    pub(crate) fn from_rows(rows: &[&[u64]]) -> Self {
        Self {
            layers: rows
                .iter()
                .enumerate()
                .map(|(i, r)| LayerLoad {
                    layer: i,
                    counts: r.to_vec(),
                    tokens: 0,
                    pairs: None,
                })
                .collect(),
            per_token: false,
            aggregate: true,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.layers.iter().all(|l| l.total() == 0)
    }

    pub fn layer(&self, layer: usize) -> Option<&LayerLoad> {
        self.layers.iter().find(|l| l.layer == layer)
    }

    /// Pairs are only meaningful when every contribution was per-token.
    pub fn has_pairs(&self) -> bool {
        !self.aggregate && self.layers.first().is_some_and(|l| l.pairs.is_some())
    }

    pub fn merge(&mut self, other: &PhaseLoad) {
        for (a, b) in self.layers.iter_mut().zip(&other.layers) {
            a.merge(b);
        }
        self.per_token |= other.per_token;
        self.aggregate |= other.aggregate;
    }

    /// The load as one aggregate item over `num_layers` layers (what an SGLang dump holds):
    /// how per-token sources and many count items become one count distribution.
    pub fn to_counts(&self, num_layers: usize, id: String, phase: Option<Phase>) -> CountsTrace {
        let mut counts =
            vec![None; num_layers.max(self.layers.iter().map(|l| l.layer + 1).max().unwrap_or(0))];
        for l in &self.layers {
            counts[l.layer] = Some(l.counts.clone());
        }
        CountsTrace {
            id,
            workload: None,
            phase,
            counts,
        }
    }
}

/// Expert loads of a trace source, per phase. Items whose phase is unknown (aggregate counts
/// without a phase label) go to `unphased`; [`LoadSummary::select`] merges what a consumer
/// asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadSummary {
    pub shape: ModelShape,
    pub prefill: PhaseLoad,
    pub decode: PhaseLoad,
    pub unphased: PhaseLoad,
    pub items: u64,
}

impl LoadSummary {
    /// An empty summary; `pairs` turns on co-activation counting (E²/2 counters per layer).
    pub fn new(shape: ModelShape, pairs: bool) -> Self {
        Self {
            prefill: PhaseLoad::new(&shape, pairs),
            decode: PhaseLoad::new(&shape, pairs),
            unphased: PhaseLoad::new(&shape, pairs),
            shape,
            items: 0,
        }
    }

    /// Adds one item after checking it against the shape; a bad item changes nothing.
    pub fn add(&mut self, item: &TraceItem) -> Result<(), TraceModelError> {
        item.validate(&self.shape)?;
        self.add_validated(item);
        Ok(())
    }

    /// [`LoadSummary::add`] for an item already checked against this summary's shape (the
    /// analyzer validates once and feeds several summaries). Layers the shape lacks are
    /// skipped; an unchecked expert id out of range would panic, hence crate-private.
    pub(crate) fn add_validated(&mut self, item: &TraceItem) {
        self.items += 1;
        match item {
            TraceItem::Counts(c) => {
                let target = match c.phase {
                    Some(Phase::Prefill) => &mut self.prefill,
                    Some(Phase::Decode) => &mut self.decode,
                    None => &mut self.unphased,
                };
                target.aggregate = true;
                for (layer, counts) in c.counts.iter().enumerate() {
                    let Some(counts) = counts else { continue };
                    if let Some(l) = target.layers.iter_mut().find(|l| l.layer == layer) {
                        l.counts.iter_mut().zip(counts).for_each(|(a, b)| *a += b);
                    }
                }
            }
            TraceItem::Request(r) => {
                for it in &r.iterations {
                    let target = match it.phase {
                        Phase::Prefill => &mut self.prefill,
                        Phase::Decode => &mut self.decode,
                    };
                    target.per_token = true;
                    for lr in &it.layers {
                        let Some(l) = target
                            .layers
                            .iter_mut()
                            .find(|l| l.layer == lr.layer as usize)
                        else {
                            continue;
                        };
                        let n = l.counts.len();
                        for t in 0..lr.num_tokens() {
                            let sel = lr.token(t);
                            let mut any = false;
                            for &e in sel {
                                if e != MISSING_EXPERT {
                                    l.counts[e as usize] += 1;
                                    any = true;
                                }
                            }
                            l.tokens += u64::from(any);
                            if let Some(p) = &mut l.pairs {
                                for a in 0..sel.len() {
                                    for b in a + 1..sel.len() {
                                        let (x, y) = (sel[a], sel[b]);
                                        if x != MISSING_EXPERT && y != MISSING_EXPERT && x != y {
                                            p[pair_index(x as usize, y as usize, n)] += 1;
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Adds another summary of the same shape (for per-thread accumulation).
    pub fn merge(&mut self, other: &LoadSummary) {
        self.prefill.merge(&other.prefill);
        self.decode.merge(&other.decode);
        self.unphased.merge(&other.unphased);
        self.items += other.items;
    }

    /// The load of one phase, or of everything when `phase` is `None`. Unphased data only
    /// counts towards "everything".
    pub fn select(&self, phase: Option<Phase>) -> PhaseLoad {
        match phase {
            Some(Phase::Prefill) => self.prefill.clone(),
            Some(Phase::Decode) => self.decode.clone(),
            None => {
                let mut all = self.prefill.clone();
                all.merge(&self.decode);
                all.merge(&self.unphased);
                all
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Iteration, LayerRouting, RequestTrace};

    fn shape() -> ModelShape {
        ModelShape {
            model: None,
            num_layers: 2,
            num_experts: 4,
            top_k: 2,
            moe_layers: vec![1],
        }
    }

    #[test]
    fn pair_index_is_a_bijection_on_the_upper_triangle() {
        let n = 7;
        let mut seen = vec![false; n * (n - 1) / 2];
        for i in 0..n {
            for j in i + 1..n {
                let k = pair_index(i, j, n);
                assert_eq!(k, pair_index(j, i, n));
                assert!(!seen[k]);
                seen[k] = true;
            }
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn counts_tokens_pairs_and_phases() {
        let mut s = LoadSummary::new(shape(), true);
        let req = TraceItem::Request(RequestTrace {
            id: "a".into(),
            workload: None,
            prompt_len: 2,
            started_ms: None,
            finished_ms: None,
            iterations: vec![
                Iteration {
                    phase: Phase::Prefill,
                    layers: vec![LayerRouting {
                        layer: 1,
                        top_k: 2,
                        experts: vec![0, 1, 0, 2],
                        weights: None,
                    }],
                },
                Iteration {
                    phase: Phase::Decode,
                    layers: vec![LayerRouting {
                        layer: 1,
                        top_k: 2,
                        experts: vec![3, MISSING_EXPERT],
                        weights: None,
                    }],
                },
            ],
        });
        s.add(&req).unwrap();
        let p = s.prefill.layer(1).unwrap();
        assert_eq!(p.counts, vec![2, 1, 1, 0]);
        assert_eq!(p.tokens, 2);
        assert_eq!(p.pair(0, 1), Some(1));
        assert_eq!(p.pair(2, 0), Some(1));
        assert_eq!(p.pair(1, 2), Some(0));
        assert_eq!(s.decode.layer(1).unwrap().counts, vec![0, 0, 0, 1]);

        let counts = TraceItem::Counts(CountsTrace {
            id: "c".into(),
            workload: None,
            phase: None,
            counts: vec![None, Some(vec![1, 1, 1, 1])],
        });
        s.add(&counts).unwrap();
        let all = s.select(None);
        assert_eq!(all.layer(1).unwrap().counts, vec![3, 2, 2, 2]);
        assert!(all.aggregate && all.per_token && !all.has_pairs());
        assert!(s.select(Some(Phase::Prefill)).has_pairs());
        let c = all.to_counts(2, "all".into(), None);
        assert_eq!(c.counts, vec![None, Some(vec![3, 2, 2, 2])]);

        let bad = TraceItem::Counts(CountsTrace {
            id: "b".into(),
            workload: None,
            phase: None,
            counts: vec![None, Some(vec![1, 1])],
        });
        assert!(s.add(&bad).is_err());
        assert_eq!(s.items, 2);
    }
}
