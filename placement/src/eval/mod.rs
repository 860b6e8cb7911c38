//! Trace-replay evaluation of placement plans.
//!
//! An [`Evaluator`] replays trace items against one plan and reports, per MoE layer and
//! overall, how evenly the ranks are loaded, the modelled MoE time of a step under a
//! [`DeviceProfile`], and (for per-token data) the all-to-all bytes and the destination ranks
//! per token.
//!
//! Conventions:
//! - Aggregate counts ([`moeflow_trace::CountsTrace`]): a replicated expert's selections are
//!   split evenly between its copies (EPLB's convention); bytes and ranks per token are not
//!   available from counts.
//! - Per-token data ([`moeflow_trace::RequestTrace`]): requests are spread over the ranks
//!   by a hash of the request id (attention data-parallel: a request's tokens live on one rank), and every
//!   selection goes to the replica [`ReplicaSelector`] picks at run time: the token's own
//!   rank if it hosts the expert, else the copy that has received the fewest tokens from this
//!   rank in the current step. A step of a rank is a window of `window_tokens` tokens.
//!   A token sends its hidden state once to every remote rank that computes one of its
//!   experts and gets it back (dispatch + combine): `2 * hidden * bytes_per_elem` bytes per
//!   (token, remote rank).
//! - Times: the loads are scaled to one step in which the group processes `tokens_per_step`
//!   tokens; a rank's time is the roofline time of each of its experts' tokens plus its link
//!   time (bytes it sends and receives, within and across nodes, at the profile's link
//!   bandwidths); the step time is the busiest rank's.

mod compare;
pub mod plot;
mod report;

pub use crate::profile::{DeviceProfile, ProfileError, PROFILE_NAMES};
pub use compare::{compare, Compare, CompareError};
pub use report::{Comparison, EvalReport, LayerReport, OverallReport};

use moeflow_trace::{
    CountsTrace, ModelShape, Phase, RequestTrace, TraceItem, TraceModelError, MISSING_EXPERT,
};
use serde::{Deserialize, Serialize};

use crate::cost::{CostModel, ExpertShape};
use crate::{PlacementPlan, PlanError, PlanTarget, ReplicaSelector};

/// Why an evaluation cannot run or an item cannot be replayed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    #[error("the plan does not fit the trace's model ({model}): {source}")]
    Plan {
        model: String,
        #[source]
        source: PlanError,
    },
    #[error("trace item `{id}` does not fit the model: {source}")]
    Item {
        id: String,
        #[source]
        source: TraceModelError,
    },
    #[error(
        "ranks_per_node {ranks_per_node} must be positive and divide the plan's {ranks} ranks"
    )]
    RanksPerNode { ranks_per_node: usize, ranks: usize },
    #[error("cannot merge evaluators of different {0}")]
    Merge(&'static str),
}

/// How to replay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalOptions {
    /// Expert dimensions for the roofline; its hidden size is also the activation width.
    pub expert: ExpertShape,
    /// Bytes per activation element sent between ranks.
    pub bytes_per_elem: usize,
    pub ranks_per_node: Option<usize>,
    /// Replay only this phase (aggregate items without a phase label are always replayed).
    pub phase: Option<Phase>,
    /// Tokens per step of the whole group for the modelled times (default 128 per rank).
    pub tokens_per_step: Option<f64>,
    /// Tokens a rank routes per step, the window of [`ReplicaSelector`]'s balancing.
    pub window_tokens: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            expert: ExpertShape::default(),
            bytes_per_elem: 2,
            ranks_per_node: None,
            phase: None,
            tokens_per_step: None,
            window_tokens: 128,
        }
    }
}

/// Sums of one MoE layer; all additive, so evaluators merge by adding.
#[derive(Debug, Clone)]
struct LayerAcc {
    /// rank * E + expert → selections computed there.
    computed: Vec<f64>,
    tokens: u64,
    bytes: u64,
    cross_node_bytes: u64,
    ranks: u64,
    remote_ranks: u64,
    /// Per rank: remote (token, rank) sends it takes part in, as source or destination,
    /// within its node and across nodes.
    link_intra: Vec<u64>,
    link_inter: Vec<u64>,
}

impl LayerAcc {
    fn merge(&mut self, o: &LayerAcc) {
        self.computed
            .iter_mut()
            .zip(&o.computed)
            .for_each(|(a, b)| *a += b);
        self.tokens += o.tokens;
        self.bytes += o.bytes;
        self.cross_node_bytes += o.cross_node_bytes;
        self.ranks += o.ranks;
        self.remote_ranks += o.remote_ranks;
        self.link_intra
            .iter_mut()
            .zip(&o.link_intra)
            .for_each(|(a, b)| *a += b);
        self.link_inter
            .iter_mut()
            .zip(&o.link_inter)
            .for_each(|(a, b)| *a += b);
    }
}

/// Replays trace items against one plan. Feed items with [`Evaluator::add`] (or
/// [`Evaluator::add_at`] to choose the rank), fold parts built on several threads with
/// [`Evaluator::merge`], and read the result with [`Evaluator::finish`].
#[derive(Debug, Clone)]
pub struct Evaluator {
    plan: PlacementPlan,
    selector: ReplicaSelector,
    shape: ModelShape,
    profile: DeviceProfile,
    opts: EvalOptions,
    /// Layer id → position in `shape.moe_layers`.
    position: Vec<Option<usize>>,
    /// Per MoE layer, copies of every expert.
    copies: Vec<Vec<usize>>,
    acc: Vec<LayerAcc>,
    /// Per source rank: per MoE layer, tokens sent to each rank in the current window, and
    /// tokens routed in the window so far.
    window: Vec<(Vec<Vec<usize>>, usize)>,
    items: u64,
    per_token: bool,
    aggregate: bool,
}

impl Evaluator {
    /// Checks the plan on its own and against the trace's model (expert count, MoE layers).
    pub fn new(
        plan: &PlacementPlan,
        shape: &ModelShape,
        profile: DeviceProfile,
        opts: EvalOptions,
    ) -> Result<Self, EvalError> {
        let target = PlanTarget {
            num_experts: shape.num_experts,
            moe_layers: shape.moe_layers.clone(),
        };
        let model = shape
            .model
            .clone()
            .unwrap_or_else(|| "unnamed model".into());
        plan.validate()
            .and_then(|()| plan.check_target(&target))
            .map_err(|source| EvalError::Plan { model, source })?;
        let n = plan.num_ranks;
        if let Some(rpn) = opts.ranks_per_node {
            if rpn == 0 || !n.is_multiple_of(rpn) {
                return Err(EvalError::RanksPerNode {
                    ranks_per_node: rpn,
                    ranks: n,
                });
            }
        }
        let e = shape.num_experts;
        let mut position = vec![None; shape.num_layers];
        for (i, &l) in shape.moe_layers.iter().enumerate() {
            if let Some(p) = position.get_mut(l) {
                *p = Some(i);
            }
        }
        let selector = ReplicaSelector::new(plan);
        let copies = shape
            .moe_layers
            .iter()
            .map(|&l| (0..e as u32).map(|x| selector.hosts(l, x).len()).collect())
            .collect();
        let layers = shape.moe_layers.len();
        let acc = LayerAcc {
            computed: vec![0.0; n * e],
            tokens: 0,
            bytes: 0,
            cross_node_bytes: 0,
            ranks: 0,
            remote_ranks: 0,
            link_intra: vec![0; n],
            link_inter: vec![0; n],
        };
        Ok(Self {
            plan: plan.clone(),
            selector,
            shape: shape.clone(),
            profile,
            opts,
            position,
            copies,
            acc: vec![acc; layers],
            window: vec![(vec![vec![0; n]; layers], 0); n],
            items: 0,
            per_token: false,
            aggregate: false,
        })
    }

    /// Replays one item; a request's tokens live on the rank its id hashes to (FNV-1a), so
    /// the result does not depend on the order in which threads hand items over.
    pub fn add(&mut self, item: &TraceItem) -> Result<(), EvalError> {
        let rank = fnv1a(item.id().as_bytes()) as usize % self.plan.num_ranks;
        self.add_at(item, rank)
    }

    /// Replays one item with a request's tokens on `rank` (taken modulo the rank count), for
    /// callers that split a source over threads and assign ranks themselves.
    pub fn add_at(&mut self, item: &TraceItem, rank: usize) -> Result<(), EvalError> {
        item.validate(&self.shape)
            .map_err(|source| EvalError::Item {
                id: item.id().to_string(),
                source,
            })?;
        match item {
            TraceItem::Counts(c) => self.add_counts(c),
            TraceItem::Request(r) => self.add_request(r, rank % self.plan.num_ranks),
        }
        Ok(())
    }

    fn add_counts(&mut self, c: &CountsTrace) {
        if let (Some(want), Some(got)) = (self.opts.phase, c.phase) {
            if want != got {
                return;
            }
        }
        self.items += 1;
        self.aggregate = true;
        let e = self.shape.num_experts;
        for (layer, counts) in c.counts.iter().enumerate() {
            let (Some(counts), Some(Some(li))) = (counts, self.position.get(layer)) else {
                continue;
            };
            let li = *li;
            for (x, &cnt) in counts.iter().enumerate() {
                let hosts = self.selector.hosts(layer, x as u32);
                let share = cnt as f64 / self.copies[li][x].max(1) as f64;
                for &r in hosts {
                    self.acc[li].computed[r * e + x] += share;
                }
            }
        }
    }

    fn add_request(&mut self, req: &RequestTrace, src: usize) {
        let mut any = false;
        let e = self.shape.num_experts;
        let send = (self.opts.expert.hidden_size * self.opts.bytes_per_elem) as u64;
        for it in &req.iterations {
            if self.opts.phase.is_some_and(|p| p != it.phase) {
                continue;
            }
            any = true;
            if self.window[src].1 >= self.opts.window_tokens {
                let (w, count) = &mut self.window[src];
                w.iter_mut().for_each(|l| l.fill(0));
                *count = 0;
            }
            self.window[src].1 += it.num_tokens();
            for lr in &it.layers {
                let layer = lr.layer as usize;
                let Some(Some(li)) = self.position.get(layer).copied() else {
                    continue;
                };
                let mut dests: Vec<usize> = Vec::with_capacity(lr.top_k as usize);
                for t in 0..lr.num_tokens() {
                    dests.clear();
                    for &x in lr.token(t) {
                        if x == MISSING_EXPERT {
                            continue;
                        }
                        let load = &mut self.window[src].0[li];
                        let Some(r) = self.selector.choose(layer, u32::from(x), src, load) else {
                            continue;
                        };
                        self.acc[li].computed[r * e + x as usize] += 1.0;
                        if !dests.contains(&r) {
                            dests.push(r);
                        }
                    }
                    if dests.is_empty() {
                        continue;
                    }
                    let acc = &mut self.acc[li];
                    acc.tokens += 1;
                    acc.ranks += dests.len() as u64;
                    for &d in dests.iter().filter(|&&d| d != src) {
                        acc.remote_ranks += 1;
                        acc.bytes += 2 * send;
                        let cross = self.opts.ranks_per_node.is_some_and(|r| d / r != src / r);
                        if cross {
                            acc.cross_node_bytes += 2 * send;
                            acc.link_inter[src] += 1;
                            acc.link_inter[d] += 1;
                        } else {
                            acc.link_intra[src] += 1;
                            acc.link_intra[d] += 1;
                        }
                    }
                }
            }
        }
        if any {
            self.items += 1;
            self.per_token = true;
        }
    }

    /// Adds another evaluator's sums (same plan, model and options).
    pub fn merge(&mut self, other: &Evaluator) -> Result<(), EvalError> {
        if self.plan.fingerprint() != other.plan.fingerprint() {
            return Err(EvalError::Merge("plans"));
        }
        if self.shape != other.shape {
            return Err(EvalError::Merge("models"));
        }
        if self.opts != other.opts || self.profile != other.profile {
            return Err(EvalError::Merge("options"));
        }
        for (a, b) in self.acc.iter_mut().zip(&other.acc) {
            a.merge(b);
        }
        self.items += other.items;
        self.per_token |= other.per_token;
        self.aggregate |= other.aggregate;
        Ok(())
    }

    /// The report of everything replayed so far.
    pub fn finish(&self) -> EvalReport {
        let n = self.plan.num_ranks;
        let e = self.shape.num_experts;
        let t_step = self.opts.tokens_per_step.unwrap_or(128.0 * n as f64);
        let cost = CostModel {
            expert: self.opts.expert.clone(),
            profile: self.profile.clone(),
            tokens_per_step: Some(t_step),
        };
        let send = (self.opts.expert.hidden_size * self.opts.bytes_per_elem) as f64;
        let mut layers = Vec::with_capacity(self.acc.len());
        for (acc, &layer) in self.acc.iter().zip(&self.shape.moe_layers) {
            let rank_load: Vec<f64> = (0..n)
                .map(|r| acc.computed[r * e..(r + 1) * e].iter().sum())
                .collect();
            let total: f64 = rank_load.iter().sum();
            let max = rank_load.iter().cloned().fold(0.0, f64::max);
            let min = rank_load.iter().cloned().fold(f64::INFINITY, f64::min);
            let scale = cost.step_scale(total, self.shape.top_k);
            let tok_scale = if acc.tokens > 0 {
                t_step / acc.tokens as f64
            } else {
                0.0
            };
            let mut compute_max = 0.0f64;
            let mut step_max = 0.0f64;
            for r in 0..n {
                let compute: f64 = acc.computed[r * e..(r + 1) * e]
                    .iter()
                    .map(|&c| cost.cost(c * scale))
                    .sum();
                let link = send
                    * tok_scale
                    * (acc.link_intra[r] as f64 / self.profile.intra_node_bw
                        + acc.link_inter[r] as f64 / self.profile.inter_node_bw);
                compute_max = compute_max.max(compute);
                step_max = step_max.max(compute + link);
            }
            let per_tok = |v: u64| (acc.tokens > 0).then(|| v as f64 / acc.tokens as f64);
            layers.push(LayerReport {
                layer,
                busiest_over_mean: (total > 0.0).then(|| max / (total / n as f64)),
                busiest_over_least: (min > 0.0).then(|| max / min),
                step_time_s: step_max,
                compute_time_s: compute_max,
                tokens: (acc.tokens > 0).then_some(acc.tokens),
                bytes_per_token: per_tok(acc.bytes),
                cross_node_bytes_per_token: per_tok(acc.cross_node_bytes),
                ranks_per_token: per_tok(acc.ranks),
                remote_ranks_per_token: per_tok(acc.remote_ranks),
                rank_load,
            });
        }
        let mean = |f: &dyn Fn(&LayerReport) -> Option<f64>| {
            let v: Vec<f64> = layers.iter().filter_map(f).collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        };
        let overall = OverallReport {
            busiest_over_mean: mean(&|l| l.busiest_over_mean),
            busiest_over_least: mean(&|l| l.busiest_over_least),
            step_time_s: layers.iter().map(|l| l.step_time_s).sum(),
            compute_time_s: layers.iter().map(|l| l.compute_time_s).sum(),
            bytes_per_token_per_layer: mean(&|l| l.bytes_per_token),
            cross_node_bytes_per_token_per_layer: mean(&|l| l.cross_node_bytes_per_token),
            ranks_per_token: mean(&|l| l.ranks_per_token),
            remote_ranks_per_token: mean(&|l| l.remote_ranks_per_token),
        };
        EvalReport {
            algorithm: self.plan.algorithm.clone(),
            plan_source: self.plan.source.clone(),
            num_ranks: n,
            ranks_per_node: self.opts.ranks_per_node,
            profile: self.profile.name.clone(),
            tokens_per_step: t_step,
            items: self.items,
            per_token: self.per_token,
            aggregate: self.aggregate,
            layers,
            overall,
        }
    }
}

/// FNV-1a, 64-bit: a fixed hash (unlike `std`'s) so that rank assignment is reproducible.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PLAN_FORMAT;
    use moeflow_trace::{Iteration, LayerRouting};

    fn shape() -> ModelShape {
        ModelShape {
            model: Some("tiny".into()),
            num_layers: 2,
            num_experts: 4,
            top_k: 2,
            moe_layers: vec![1],
        }
    }

    /// 2 ranks, expert 0 on both.
    fn plan() -> PlacementPlan {
        PlacementPlan {
            format: PLAN_FORMAT.into(),
            num_ranks: 2,
            num_experts: 4,
            layers: [("1".to_string(), vec![vec![0, 1, 2], vec![0, 3]])]
                .into_iter()
                .collect(),
            slots_per_rank: Some(3),
            model: None,
            algorithm: Some("hand".into()),
            source: None,
        }
    }

    fn counts(c: Vec<u64>) -> TraceItem {
        TraceItem::Counts(CountsTrace {
            id: "c".into(),
            workload: None,
            phase: Some(Phase::Decode),
            counts: vec![None, Some(c)],
        })
    }

    fn request(experts: Vec<u16>) -> TraceItem {
        TraceItem::Request(RequestTrace {
            id: "r".into(),
            workload: None,
            prompt_len: experts.len() / 2,
            started_ms: None,
            finished_ms: None,
            iterations: vec![Iteration {
                phase: Phase::Prefill,
                layers: vec![LayerRouting {
                    layer: 1,
                    top_k: 2,
                    experts,
                    weights: None,
                }],
            }],
        })
    }

    fn opts() -> EvalOptions {
        EvalOptions {
            ranks_per_node: Some(1),
            ..EvalOptions::default()
        }
    }

    #[test]
    fn counts_split_evenly_between_replicas() {
        let mut ev = Evaluator::new(&plan(), &shape(), DeviceProfile::h100(), opts()).unwrap();
        ev.add(&counts(vec![8, 2, 2, 4])).unwrap();
        let r = ev.finish();
        let l = &r.layers[0];
        assert_eq!(l.rank_load, vec![8.0, 8.0]);
        assert_eq!(l.busiest_over_mean, Some(1.0));
        assert_eq!(l.bytes_per_token, None);
        assert!(r.aggregate && !r.per_token);
        ev.add(&counts(vec![0, 4, 0, 0])).unwrap();
        let l = &ev.finish().layers[0];
        assert_eq!(l.rank_load, vec![12.0, 8.0]);
        assert_eq!(l.busiest_over_mean, Some(1.2));
        assert_eq!(l.busiest_over_least, Some(1.5));
        // Another phase is skipped when a phase is asked for.
        let mut o = opts();
        o.phase = Some(Phase::Prefill);
        let mut ev = Evaluator::new(&plan(), &shape(), DeviceProfile::h100(), o).unwrap();
        ev.add(&counts(vec![8, 2, 2, 4])).unwrap();
        assert_eq!(ev.finish().items, 0);
    }

    #[test]
    fn tokens_follow_the_replica_rule_and_count_bytes() {
        let mut ev = Evaluator::new(&plan(), &shape(), DeviceProfile::h100(), opts()).unwrap();
        // Request 0 on rank 0: token (0, 3) -> 0 local, 3 on rank 1; token (1, 2) all local.
        ev.add_at(&request(vec![0, 3, 1, 2]), 0).unwrap();
        // Request 1 on rank 1: token (0, 1) -> 0 local on rank 1, 1 on rank 0.
        ev.add_at(&request(vec![0, 1]), 1).unwrap();
        let r = ev.finish();
        let l = &r.layers[0];
        assert_eq!(l.rank_load, vec![4.0, 2.0]);
        assert_eq!(l.busiest_over_mean, Some(4.0 / 3.0));
        assert_eq!(l.tokens, Some(3));
        // Two (token, remote rank) sends of 2 * 7168 * 2 bytes, over 3 tokens.
        let send = 2.0 * 7168.0 * 2.0;
        assert_eq!(l.bytes_per_token, Some(2.0 * send / 3.0));
        // One rank per node: every remote send crosses nodes.
        assert_eq!(l.cross_node_bytes_per_token, l.bytes_per_token);
        assert_eq!(l.ranks_per_token, Some(5.0 / 3.0));
        assert_eq!(l.remote_ranks_per_token, Some(2.0 / 3.0));
        assert!(l.step_time_s > l.compute_time_s && l.compute_time_s > 0.0);
        let text = r.table();
        assert!(text.contains("hand") && text.lines().count() == 4, "{text}");
        let back: EvalReport = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn merged_parts_equal_one_pass() {
        let items = [
            request(vec![0, 3, 1, 2]),
            request(vec![0, 1]),
            counts(vec![1, 2, 3, 4]),
        ];
        let mut one = Evaluator::new(&plan(), &shape(), DeviceProfile::cpu(), opts()).unwrap();
        let mut a = one.clone();
        let mut b = one.clone();
        for (i, it) in items.iter().enumerate() {
            one.add_at(it, i).unwrap();
        }
        a.add_at(&items[0], 0).unwrap();
        b.add_at(&items[1], 1).unwrap();
        b.add_at(&items[2], 2).unwrap();
        a.merge(&b).unwrap();
        assert_eq!(a.finish(), one.finish());
        let other = Evaluator::new(
            &PlacementPlan::contiguous(
                &PlanTarget {
                    num_experts: 4,
                    moe_layers: vec![1],
                },
                2,
            )
            .unwrap(),
            &shape(),
            DeviceProfile::cpu(),
            opts(),
        )
        .unwrap();
        assert_eq!(a.merge(&other), Err(EvalError::Merge("plans")));
    }

    #[test]
    fn bad_input_names_what_differs() {
        let p = DeviceProfile::h100();
        // A plan for another model: different MoE layers.
        let mut s = shape();
        s.num_layers = 3;
        s.moe_layers = vec![1, 2];
        let err = Evaluator::new(&plan(), &s, p.clone(), opts()).unwrap_err();
        assert!(matches!(
            err,
            EvalError::Plan {
                source: PlanError::MissingLayer { layer: 2 },
                ..
            }
        ));
        assert!(err.to_string().contains("tiny"), "{err}");
        // Another expert count.
        let mut s = shape();
        s.num_experts = 8;
        let err = Evaluator::new(&plan(), &s, p.clone(), opts()).unwrap_err();
        assert!(err
            .to_string()
            .contains("plan is for 4 experts per layer, the model has 8"));
        // A plan that leaves expert 3 unhosted.
        let mut bad = plan();
        bad.layers.get_mut("1").unwrap()[1] = vec![0];
        let err = Evaluator::new(&bad, &shape(), p.clone(), opts()).unwrap_err();
        assert!(err.to_string().contains("expert 3 is not hosted"), "{err}");
        // A source whose expert count differs from the plan's.
        let mut ev = Evaluator::new(&plan(), &shape(), p.clone(), opts()).unwrap();
        let err = ev.add(&counts(vec![1; 6])).unwrap_err();
        assert!(
            err.to_string()
                .contains("layer 1 has 6 experts, the model has 4"),
            "{err}"
        );
        let err = ev.add(&request(vec![0, 7])).unwrap_err();
        assert!(err.to_string().contains("expert 7 out of range"), "{err}");
        assert_eq!(ev.finish().items, 0);
        let o = EvalOptions {
            ranks_per_node: Some(3),
            ..EvalOptions::default()
        };
        assert!(matches!(
            Evaluator::new(&plan(), &shape(), p, o),
            Err(EvalError::RanksPerNode { .. })
        ));
    }
}
