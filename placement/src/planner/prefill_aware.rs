//! The paper's prefill-aware placement (Algorithm 2): Remap and Dup under a roofline cost.

use super::robust::Robust;
use super::{assemble, eplb, layout, PlanInput, Planner, PlannerError};

use crate::PlacementPlan;

/// Which form of Algorithm 2 to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefillAwareVariant {
    /// Remap: experts by cost, descending, each to the least-loaded rank with fewer than
    /// `E/N` experts; then the redundant slots as in Dup; then a swap search that lowers the
    /// busiest rank (moeflow's addition: it can only lower the maximum).
    Remap,
    /// Dup, as published: the contiguous layout, plus `R` replicas per rank added one at a
    /// time, each the (expert, rank) pair that lowers the maximum rank cost most.
    Dup,
    /// Candidates: EPLB's layouts at the same slot budget (global, and hierarchical where
    /// it applies), Dup, Remap (with Dup's replicas), and Remap applied to copies (replicas
    /// first, each to the expert whose copies cost most, then all copies by cost to the
    /// least-loaded rank, spreading router groups, then the swap search). Per layer, the
    /// best EPLB layout by expected busiest rank under perturbed loads (see
    /// [`crate::planner::LoadNoise`]) is kept unless another candidate beats it by more than
    /// twice the standard error of the paired difference over the perturbations. Choosing by
    /// the exact maximum on the planning data overfits it: the swap search shaves the last
    /// percent off the prefill maximum with layouts that are worse on decode, and a
    /// contiguous base keeps whole router groups on a rank, which a group-level shift
    /// unbalances. By this criterion the result is never worse than EPLB in either mode.
    Auto,
}

/// Prefill-aware placement: plans from one phase's loads (the paper uses prefill traces to
/// place for decode) with each expert's cost its roofline time `max(weight bytes / memory
/// bandwidth, FLOPs / FLOP rate)` for its tokens, and a replicated expert's tokens split
/// evenly between its copies.
#[derive(Debug, Clone, Copy)]
pub struct PrefillAware {
    pub variant: PrefillAwareVariant,
}

impl PrefillAware {
    pub fn new(variant: PrefillAwareVariant) -> Self {
        Self { variant }
    }
}

impl Planner for PrefillAware {
    fn name(&self) -> &str {
        match self.variant {
            PrefillAwareVariant::Auto => "prefill-aware",
            PrefillAwareVariant::Remap => "prefill-aware-remap",
            PrefillAwareVariant::Dup => "prefill-aware-dup",
        }
    }

    fn plan(&self, input: &PlanInput) -> Result<PlacementPlan, PlannerError> {
        input.validate()?;
        assemble(self.name(), input, |i| Ok(layer(input, i, self.variant)))
    }
}

/// The layout of MoE layer number `i` under `variant`.
pub(crate) fn layer(input: &PlanInput, i: usize, variant: PrefillAwareVariant) -> Vec<Vec<u32>> {
    let tokens = input.step_tokens(i);
    let cost = |x: f64| input.cost.cost(x);
    let (e, n, slots) = (
        input.target.num_experts,
        input.num_ranks,
        input.slots_per_rank(),
    );
    let dup_only = || {
        let mut r = layout::contiguous(e, n);
        dup(&mut r, &tokens, &cost, slots);
        r
    };
    let remap = || {
        let items: Vec<(u32, f64)> = (0..e).map(|x| (x as u32, cost(tokens[x]))).collect();
        let mut r = layout::pack(&items, n, e / n);
        dup(&mut r, &tokens, &cost, slots);
        refine(&mut r, &tokens, &cost);
        r
    };
    // Remap applied to copies: replicas first, each to the expert whose copies cost most
    // (the choice that lowers the maximum most when copies can go anywhere), then every copy
    // by cost, descending, to the least-loaded rank with room, spreading the router's expert
    // groups over the ranks (experts of a group rise and fall together when the workload
    // shifts, e.g. from prefill to decode, so a rank full of one group is fragile).
    let remap_copies = || {
        let k = replicate_by_cost(&tokens, &cost, n * slots, n);
        let items: Vec<(u32, f64)> = (0..e)
            .flat_map(|x| std::iter::repeat_n((x as u32, cost(tokens[x] / k[x] as f64)), k[x]))
            .collect();
        let mut r = layout::pack_spread(&items, n, slots, input.num_groups);
        refine(&mut r, &tokens, &cost);
        r
    };
    match variant {
        PrefillAwareVariant::Dup => dup_only(),
        PrefillAwareVariant::Remap => remap(),
        PrefillAwareVariant::Auto => {
            let robust = Robust::new(input, i, &cost);
            let eplb = eplb::eplb_candidates(input, &input.load[i]);
            robust.choose(eplb, vec![dup_only(), remap(), remap_copies()])
        }
    }
}

/// Copies per expert when `num_copies` slots are handed out one at a time to the expert
/// whose copies cost most (at most `max_copies` each).
fn replicate_by_cost(
    tokens: &[f64],
    cost: &dyn Fn(f64) -> f64,
    num_copies: usize,
    max_copies: usize,
) -> Vec<usize> {
    let mut k = vec![1usize; tokens.len()];
    for _ in tokens.len()..num_copies {
        let best = (0..tokens.len())
            .filter(|&x| k[x] < max_copies)
            .max_by(|&a, &b| {
                cost(tokens[a] / k[a] as f64)
                    .total_cmp(&cost(tokens[b] / k[b] as f64))
                    .then(b.cmp(&a))
            });
        match best {
            Some(x) => k[x] += 1,
            None => break,
        }
    }
    k
}

/// The busiest rank's cost.
#[cfg(test)]
fn max_cost(ranks: &[Vec<u32>], tokens: &[f64], cost: &dyn Fn(f64) -> f64) -> f64 {
    let copies = layout::copies(ranks, tokens.len());
    layout::rank_loads(ranks, tokens, &copies, cost)
        .into_iter()
        .fold(0.0, f64::max)
}

/// Swap search that lowers the busiest rank, copies keeping their cost.
fn refine(ranks: &mut [Vec<u32>], tokens: &[f64], cost: &dyn Fn(f64) -> f64) {
    let copies = layout::copies(ranks, tokens.len());
    let item: Vec<f64> = (0..tokens.len())
        .map(|x| layout::copy_cost(x as u32, tokens, &copies, cost))
        .collect();
    layout::refine_max(ranks, &item, &|_, _, _, _, _| true);
}

/// Dup: fills every rank up to `slots` one replica at a time, each time the (expert, rank)
/// pair whose new copy gives the lowest maximum rank cost (ties: the lowest sum of squared
/// rank costs, i.e. the most even spread). Returns the maximum after each step.
pub(crate) fn dup(
    ranks: &mut [Vec<u32>],
    tokens: &[f64],
    cost: &dyn Fn(f64) -> f64,
    slots: usize,
) -> Vec<f64> {
    let (n, e) = (ranks.len(), tokens.len());
    let mut k = layout::copies(ranks, e);
    let mut hosts: Vec<Vec<usize>> = vec![Vec::new(); e];
    for (r, experts) in ranks.iter().enumerate() {
        for &x in experts {
            hosts[x as usize].push(r);
        }
    }
    let mut loads = layout::rank_loads(ranks, tokens, &k, cost);
    let mut trace = Vec::new();
    loop {
        let open: Vec<usize> = (0..n).filter(|&r| ranks[r].len() < slots).collect();
        if open.is_empty() {
            break;
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| loads[b].total_cmp(&loads[a]));
        let tol = 1e-12 * loads.iter().cloned().fold(0.0, f64::max);
        let mut best: Option<(f64, f64, usize, usize)> = None;
        for x in 0..e {
            if hosts[x].len() >= n {
                continue;
            }
            let old = cost(tokens[x] / k[x] as f64);
            let new = cost(tokens[x] / (k[x] + 1) as f64);
            let mut shrunk_max = 0.0f64;
            let mut shrunk_dsq = 0.0;
            for &h in &hosts[x] {
                let l = loads[h] - old + new;
                shrunk_max = shrunk_max.max(l);
                shrunk_dsq += l * l - loads[h] * loads[h];
            }
            for &r in &open {
                if hosts[x].contains(&r) {
                    continue;
                }
                let lr = loads[r] + new;
                let mut nm = shrunk_max.max(lr);
                if let Some(&u) = order.iter().find(|&&u| u != r && !hosts[x].contains(&u)) {
                    nm = nm.max(loads[u]);
                }
                let dsq = shrunk_dsq + lr * lr - loads[r] * loads[r];
                let better = match best {
                    None => true,
                    Some((bm, bd, _, _)) => nm < bm - tol || (nm <= bm + tol && dsq < bd - tol),
                };
                if better {
                    best = Some((nm, dsq, x, r));
                }
            }
        }
        // Every expert is on every open rank: nothing distinct left to add.
        let Some((_, _, x, r)) = best else { break };
        let old = cost(tokens[x] / k[x] as f64);
        k[x] += 1;
        let new = cost(tokens[x] / k[x] as f64);
        for &h in &hosts[x] {
            loads[h] += new - old;
        }
        loads[r] += new;
        hosts[x].push(r);
        ranks[r].push(x as u32);
        trace.push(loads.iter().cloned().fold(0.0, f64::max));
    }
    trace
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::testutil::{input, max_load};
    use crate::planner::Eplb;

    #[test]
    fn remap_is_balanced_packing_by_cost() {
        let i = input(vec![vec![9.0, 8.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]], 2, 0);
        let p = PrefillAware::new(PrefillAwareVariant::Remap)
            .plan(&i)
            .unwrap();
        // 9 and 8 go to different ranks, the light ones even out.
        assert_eq!(max_load(&p, &i), 12.0);
        assert!(!p.hosts(1, 0, 1));
        let d = PrefillAware::new(PrefillAwareVariant::Dup)
            .plan(&i)
            .unwrap();
        // Without redundant slots Dup is the contiguous layout.
        assert_eq!(d.layer(1).unwrap(), &[vec![0, 1, 2, 3], vec![4, 5, 6, 7]]);
    }

    #[test]
    fn dup_lowers_the_maximum_at_every_step() {
        // Cold experts (no tokens) give Dup a free choice for the slots of ranks that cannot
        // usefully take a hot copy, so the maximum never has to rise.
        let tokens = [40.0, 5.0, 3.0, 1.0, 20.0, 2.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0];
        let mut r = layout::contiguous(12, 4);
        let start = max_cost(&r, &tokens, &|t| t);
        let trace = dup(&mut r, &tokens, &|t| t, 5);
        assert_eq!(trace.len(), 8);
        assert!(trace[0] < start);
        assert!(trace.windows(2).all(|w| w[1] <= w[0]), "{trace:?}");
        assert!(r.iter().all(|x| x.len() == 5));
        // The hottest expert got the most copies.
        let k = layout::copies(&r, 12);
        assert_eq!(k.iter().max(), Some(&k[0]));
        assert!(k[0] >= 3);
    }

    #[test]
    fn never_worse_than_eplb_on_a_skewed_layer() {
        let load: Vec<f64> = (0..32)
            .map(|x| 1.0 + ((x * 37) % 11) as f64 * (x % 5) as f64)
            .collect();
        for (n, r) in [(4, 0), (4, 1), (8, 1), (8, 2)] {
            let i = input(vec![load.clone()], n, r);
            let pa = PrefillAware::new(PrefillAwareVariant::Auto)
                .plan(&i)
                .unwrap();
            let ep = Eplb.plan(&i).unwrap();
            assert!(max_load(&pa, &i) <= max_load(&ep, &i) + 1e-9, "n {n} r {r}");
        }
    }
}
