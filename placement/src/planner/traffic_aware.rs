//! moeflow's own planner: balance first, then traffic, with hot replicas in several nodes.

use super::robust::Robust;
use super::{assemble, layout, prefill_aware, PlanInput, Planner, PlannerError};
use crate::PlacementPlan;

/// Traffic-aware placement.
///
/// 1. Start from prefill-aware's layout: among EPLB's layouts (global and, with several
///    nodes, hierarchical) and the paper's, the one with the lowest expected busiest rank
///    under perturbed loads (see [`crate::planner::LoadNoise`]), EPLB's unless another is
///    clearly better.
/// 2. Spread replicas: an expert whose copies all sit on one node gets one copy moved to
///    another node (a hot expert should survive a node failure and be near more of the
///    tokens), hottest first, by the slot swap with the lowest expected busiest rank, and
///    only if that stays within the starting layout's: spreading never costs balance, and an
///    expert that cannot be spread for free stays where it is.
/// 3. Local search over slot swaps that lowers `max rank time + lambda * link time`, where
///    the link time is that of the expected all-to-all sends per step: a token sends its
///    hidden state once per remote destination rank (dispatch and combine), so two experts
///    it selects together cost one send when they share a rank. Co-activation pair counts
///    say how often that happens; without them this step has nothing to gain and only
///    balance counts. A swap is only taken if the busiest rank stays within `1 + epsilon` of
///    the starting layout's, so the result never trades away more balance than that; hot
///    pairs whose joint load would unbalance a rank therefore stay apart, and pairs whose
///    co-location is free get co-located.
#[derive(Debug, Clone, Copy)]
pub struct TrafficAware {
    /// Allowed relative growth of the busiest rank's cost while trading for traffic.
    pub epsilon: f64,
    /// Weight of the link time against the compute time (1: both are seconds per step).
    pub lambda: f64,
    /// Hidden size and bytes per element of the activations sent per token and rank.
    pub hidden_size: usize,
    pub bytes_per_elem: usize,
}

impl Default for TrafficAware {
    fn default() -> Self {
        Self {
            epsilon: 0.02,
            lambda: 1.0,
            hidden_size: 7168,
            bytes_per_elem: 2,
        }
    }
}

impl Planner for TrafficAware {
    fn name(&self) -> &str {
        "traffic-aware"
    }

    fn plan(&self, input: &PlanInput) -> Result<PlacementPlan, PlannerError> {
        input.validate()?;
        assemble(self.name(), input, |i| Ok(self.layer(input, i)))
    }
}

impl TrafficAware {
    fn layer(&self, input: &PlanInput, i: usize) -> Vec<Vec<u32>> {
        let tokens = input.step_tokens(i);
        let cost = |x: f64| input.cost.cost(x);
        // Prefill-aware's choice already weighs EPLB's layouts (global and hierarchical).
        let mut ranks = prefill_aware::layer(input, i, prefill_aware::PrefillAwareVariant::Auto);
        let copies = layout::copies(&ranks, tokens.len());
        let item: Vec<f64> = (0..tokens.len())
            .map(|x| layout::copy_cost(x as u32, &tokens, &copies, &cost))
            .collect();
        if input.num_nodes() > 1 {
            let robust = Robust::new(input, i, &cost);
            let mut order: Vec<u32> = (0..tokens.len() as u32).collect();
            order.sort_by(|&a, &b| item[b as usize].total_cmp(&item[a as usize]));
            let swaps = |r: &[Vec<u32>], x: u32| spread_swaps(input, r, x);
            robust.swap_within(&mut ranks, &order, &swaps);
        }
        if let Some(pairs) = input.pairs.as_ref().and_then(|p| p.get(i)) {
            let scale = input
                .cost
                .step_scale(input.load[i].iter().sum(), input.top_k);
            self.co_locate(input, &mut ranks, &item, &copies, pairs, scale);
        }
        ranks
    }

    /// Seconds of link time per expected send, averaged over destinations in and out of the
    /// node, divided over the ranks (each rank's link carries its share).
    fn send_time(&self, input: &PlanInput) -> f64 {
        let n = input.num_ranks;
        let p = &input.cost.profile;
        let rpn = input.ranks_per_node.unwrap_or(n);
        let inter = if n > 1 {
            (n - rpn) as f64 / (n - 1) as f64
        } else {
            0.0
        };
        let bytes = 2.0 * (self.hidden_size * self.bytes_per_elem) as f64;
        let per_send = bytes * (inter / p.inter_node_bw + (1.0 - inter) / p.intra_node_bw);
        per_send * (1.0 - 1.0 / n as f64) / n as f64
    }

    /// Swap search: lower `max cost - lambda * send_time * saved sends`, within the balance
    /// bound and the spread rule.
    fn co_locate(
        &self,
        input: &PlanInput,
        ranks: &mut [Vec<u32>],
        item: &[f64],
        copies: &[usize],
        pairs: &[u64],
        scale: f64,
    ) {
        let (n, e) = (ranks.len(), item.len());
        // Expected per-step joint selections of two copies sharing a rank.
        let mut s = vec![0.0f64; e * e];
        for a in 0..e {
            for b in a + 1..e {
                let v = pairs[pair_index(a, b, e)] as f64 * scale
                    / (copies[a].max(1) * copies[b].max(1)) as f64;
                s[a * e + b] = v;
                s[b * e + a] = v;
            }
        }
        let w = self.lambda * self.send_time(input);
        let mut loads: Vec<f64> = ranks
            .iter()
            .map(|r| r.iter().map(|&x| item[x as usize]).sum())
            .collect();
        let bound = loads.iter().cloned().fold(0.0, f64::max) * (1.0 + self.epsilon);
        let nodes = input.num_nodes() > 1;
        for _ in 0..30 {
            let mut improved = false;
            for r in 0..n {
                for q in r + 1..n {
                    for i in 0..ranks[r].len() {
                        for j in 0..ranks[q].len() {
                            let (a, b) = (ranks[r][i], ranks[q][j]);
                            if a == b || ranks[q].contains(&a) || ranks[r].contains(&b) {
                                continue;
                            }
                            let (ca, cb) = (item[a as usize], item[b as usize]);
                            let (lr, lq) = (loads[r] - ca + cb, loads[q] - cb + ca);
                            if lr.max(lq) > bound {
                                continue;
                            }
                            let cur_max = loads.iter().cloned().fold(0.0, f64::max);
                            let others = (0..n)
                                .filter(|&x| x != r && x != q)
                                .map(|x| loads[x])
                                .fold(0.0, f64::max);
                            let new_max = others.max(lr).max(lq);
                            let (au, bu) = (a as usize * e, b as usize * e);
                            let mut saved = 0.0;
                            for &c in &ranks[r] {
                                if c != a {
                                    saved += s[bu + c as usize] - s[au + c as usize];
                                }
                            }
                            for &c in &ranks[q] {
                                if c != b {
                                    saved += s[au + c as usize] - s[bu + c as usize];
                                }
                            }
                            let delta = (new_max - cur_max) - w * saved;
                            if delta >= -1e-12 * (cur_max + w * saved.abs()) {
                                continue;
                            }
                            if nodes && !spread_after_swap(input, ranks, r, a, q, b) {
                                continue;
                            }
                            ranks[r][i] = b;
                            ranks[q][j] = a;
                            loads[r] = lr;
                            loads[q] = lq;
                            improved = true;
                        }
                    }
                }
            }
            if !improved {
                break;
            }
        }
    }
}

/// Index of the unordered pair `(a, b)` in the flattened upper triangle over `n` experts
/// (the layout of `moeflow_trace::LayerLoad::pairs`).
fn pair_index(a: usize, b: usize, n: usize) -> usize {
    let (a, b) = if a < b { (a, b) } else { (b, a) };
    a * (2 * n - a - 1) / 2 + (b - a - 1)
}

/// Whether an expert with several copies has them on more than one node, given its hosts.
fn spread_hosts(input: &PlanInput, hosts: &[usize]) -> bool {
    hosts.len() < 2
        || hosts
            .iter()
            .any(|&h| input.node_of(h) != input.node_of(hosts[0]))
}

fn hosts_of(ranks: &[Vec<u32>], x: u32) -> Vec<usize> {
    (0..ranks.len())
        .filter(|&r| ranks[r].contains(&x))
        .collect()
}

/// Whether swapping `x` (on rank `a`) with `y` (on rank `b`) keeps both spread.
fn spread_after_swap(
    input: &PlanInput,
    ranks: &[Vec<u32>],
    a: usize,
    x: u32,
    b: usize,
    y: u32,
) -> bool {
    let moved = |e: u32, from: usize, to: usize| {
        let mut h: Vec<usize> = hosts_of(ranks, e)
            .into_iter()
            .filter(|&r| r != from)
            .collect();
        h.push(to);
        let before = hosts_of(ranks, e);
        // A swap may not break a spread expert; one already unspread may stay so.
        spread_hosts(input, &h) || !spread_hosts(input, &before)
    };
    moved(x, a, b) && moved(y, b, a)
}

/// The slot swaps that would move one copy of `x` to another node, when all its copies sit
/// on one node: `(a, i, b, j)`, copy `i` of rank `a` (which is `x`) for copy `j` of rank `b`
/// on another node, where `b` lacks `x`, `a` lacks the expert coming back, and that expert
/// stays spread if it was.
fn spread_swaps(
    input: &PlanInput,
    ranks: &[Vec<u32>],
    x: u32,
) -> Vec<(usize, usize, usize, usize)> {
    let hosts = hosts_of(ranks, x);
    if spread_hosts(input, &hosts) {
        return Vec::new();
    }
    let n = ranks.len();
    let mut out = Vec::new();
    for &a in &hosts {
        let Some(i) = ranks[a].iter().position(|&v| v == x) else {
            continue;
        };
        for b in (0..n).filter(|&b| input.node_of(b) != input.node_of(a)) {
            if ranks[b].contains(&x) {
                continue;
            }
            for (j, &y) in ranks[b].iter().enumerate() {
                if ranks[a].contains(&y) {
                    continue;
                }
                let before = hosts_of(ranks, y);
                let mut after: Vec<usize> = before.iter().copied().filter(|&r| r != b).collect();
                after.push(a);
                if spread_hosts(input, &before) && !spread_hosts(input, &after) {
                    continue;
                }
                out.push((a, i, b, j));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::testutil::{input, max_load};
    use crate::planner::Eplb;

    #[test]
    fn pair_index_matches_the_trace_layout() {
        use moeflow_trace::{
            Iteration, LayerRouting, LoadSummary, ModelShape, Phase, RequestTrace, TraceItem,
        };
        let shape = ModelShape {
            model: None,
            num_layers: 1,
            num_experts: 5,
            top_k: 2,
            moe_layers: vec![0],
        };
        let mut s = LoadSummary::new(shape, true);
        s.add(&TraceItem::Request(RequestTrace {
            id: "r".into(),
            workload: None,
            prompt_len: 1,
            started_ms: None,
            finished_ms: None,
            iterations: vec![Iteration {
                phase: Phase::Prefill,
                layers: vec![LayerRouting {
                    layer: 0,
                    top_k: 2,
                    experts: vec![3, 1],
                    weights: None,
                }],
            }],
        }))
        .unwrap();
        let pairs = s.prefill.layers[0].pairs.as_ref().unwrap();
        assert_eq!(pairs[pair_index(1, 3, 5)], 1);
        assert_eq!(pairs.iter().sum::<u64>(), 1);
    }

    #[test]
    fn hot_replicas_land_on_different_nodes() {
        // One very hot expert: EPLB's hierarchical mode keeps its copies in one node.
        let mut load = vec![1.0; 16];
        load[0] = 60.0;
        load[9] = 30.0;
        let i = input(vec![load], 4, 2).with_nodes(Some(2)).with_groups(2);
        let p = TrafficAware::default().plan(&i).unwrap();
        for x in 0..16u32 {
            let hosts: Vec<usize> = (0..4).filter(|&r| p.hosts(1, r, x)).collect();
            if hosts.len() > 1 {
                assert!(
                    hosts.iter().any(|&h| h / 2 != hosts[0] / 2),
                    "expert {x} on {hosts:?}"
                );
            }
        }
        let ep = Eplb.plan(&i).unwrap();
        let hosts0: Vec<usize> = (0..4).filter(|&r| ep.hosts(1, r, 0)).collect();
        assert!(hosts0.len() > 1);
    }

    #[test]
    fn co_activated_pairs_share_a_rank_when_balance_allows() {
        // 8 equal experts on 4 ranks; experts 0 and 5, 2 and 7 always come together.
        let mut i = input(vec![vec![10.0; 8]], 4, 0);
        let mut pairs = vec![0u64; 28];
        pairs[pair_index(0, 5, 8)] = 10;
        pairs[pair_index(2, 7, 8)] = 10;
        i.pairs = Some(vec![pairs]);
        let p = TrafficAware::default().plan(&i).unwrap();
        let rank_of = |x: u32| (0..4).find(|&r| p.hosts(1, r, x)).unwrap();
        assert_eq!(rank_of(0), rank_of(5));
        assert_eq!(rank_of(2), rank_of(7));
        assert_eq!(max_load(&p, &i), 20.0);
        // Two hot experts that always come together would unbalance a rank: kept apart.
        let mut i = input(vec![vec![40.0, 40.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]], 4, 0);
        let mut pairs = vec![0u64; 28];
        pairs[pair_index(0, 1, 8)] = 40;
        i.pairs = Some(vec![pairs]);
        let p = TrafficAware::default().plan(&i).unwrap();
        assert!((0..4).all(|r| !(p.hosts(1, r, 0) && p.hosts(1, r, 1))));
    }
}
