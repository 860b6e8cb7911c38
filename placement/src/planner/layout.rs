//! Building blocks the planners share: one layer's layout is one list of expert ids per rank.

/// Number of copies of every expert in a layer layout.
pub fn copies(ranks: &[Vec<u32>], num_experts: usize) -> Vec<usize> {
    let mut c = vec![0; num_experts];
    for &e in ranks.iter().flatten() {
        if let Some(x) = c.get_mut(e as usize) {
            *x += 1;
        }
    }
    c
}

/// Load of every rank: each copy of expert `e` costs `cost(tokens[e] / copies[e])` (the
/// replicas of an expert share its tokens evenly).
pub fn rank_loads(
    ranks: &[Vec<u32>],
    tokens: &[f64],
    copies: &[usize],
    cost: &dyn Fn(f64) -> f64,
) -> Vec<f64> {
    ranks
        .iter()
        .map(|r| r.iter().map(|&e| copy_cost(e, tokens, copies, cost)).sum())
        .collect()
}

/// Cost of one copy of expert `e`.
pub fn copy_cost(e: u32, tokens: &[f64], copies: &[usize], cost: &dyn Fn(f64) -> f64) -> f64 {
    let e = e as usize;
    cost(tokens[e] / copies[e].max(1) as f64)
}

/// Experts `0..E/N` on rank 0, the next block on rank 1, ... (E divisible by N).
pub fn contiguous(num_experts: usize, num_ranks: usize) -> Vec<Vec<u32>> {
    let per = num_experts / num_ranks;
    (0..num_ranks)
        .map(|r| ((r * per) as u32..((r + 1) * per) as u32).collect())
        .collect()
}

/// Fills every rank up to `slots` with copies of the experts of the following ranks, in rank
/// order (rank r takes from r+1, r+2, ...): a load-agnostic backup for layouts planned
/// without statistics. Ranks must hold distinct experts before.
pub fn fill_ring(ranks: &mut [Vec<u32>], slots: usize) {
    let n = ranks.len();
    let originals: Vec<Vec<u32>> = ranks.to_vec();
    for (r, rank) in ranks.iter_mut().enumerate() {
        'fill: for d in 1..n {
            for &e in &originals[(r + d) % n] {
                if rank.len() >= slots {
                    break 'fill;
                }
                if !rank.contains(&e) {
                    rank.push(e);
                }
            }
        }
    }
}

/// Balanced packing of weighted items (expert id, weight) into `n` packs of exactly `cap`
/// items (`items.len() == n * cap`): heaviest first, each to the lightest pack that has room
/// and does not hold a copy of the same expert yet. When the only packs with room already
/// hold the expert, a lighter item of another pack is moved over to make room, so that no
/// pack ever holds an expert twice. Ties go to the lower pack index.
pub fn pack(items: &[(u32, f64)], n: usize, cap: usize) -> Vec<Vec<u32>> {
    pack_spread(items, n, cap, 1)
}

/// [`pack`], also spreading expert groups (`groups` equal blocks of consecutive expert ids,
/// the router's groups): a pack takes no more than its even share (rounded up) of a group's
/// items while another pack with room is under it.
pub fn pack_spread(items: &[(u32, f64)], n: usize, cap: usize, groups: usize) -> Vec<Vec<u32>> {
    let num_experts = items.iter().map(|x| x.0 as usize + 1).max().unwrap_or(0);
    let groups = groups.max(1);
    let group_size = num_experts.div_ceil(groups).max(1);
    let group = |e: u32| e as usize / group_size;
    let mut share = vec![0usize; groups];
    for &(e, _) in items {
        share[group(e).min(groups - 1)] += 1;
    }
    let limit: Vec<usize> = share.iter().map(|&c| c.div_ceil(n)).collect();
    let mut held = vec![vec![0usize; groups]; n];
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|&a, &b| items[b].1.total_cmp(&items[a].1).then(a.cmp(&b)));
    let mut packs: Vec<Vec<(u32, f64)>> = vec![Vec::with_capacity(cap); n];
    let mut loads = vec![0.0f64; n];
    for i in order {
        let (e, w) = items[i];
        let g = group(e).min(groups - 1);
        let lightest = |spread: bool| {
            (0..n)
                .filter(|&p| packs[p].len() < cap && !packs[p].iter().any(|x| x.0 == e))
                .filter(|&p| !spread || held[p][g] < limit[g])
                .min_by(|&a, &b| loads[a].total_cmp(&loads[b]).then(a.cmp(&b)))
        };
        if let Some(p) = lightest(groups > 1).or_else(|| lightest(false)) {
            packs[p].push((e, w));
            loads[p] += w;
            held[p][g] += 1;
            continue;
        }
        // Every pack with room holds `e`: take one, `p`, and trade an item of another pack
        // `q` (one that `p` lacks, as close in weight to `e` as possible) for `e`.
        let Some(p) = (0..n)
            .filter(|&p| packs[p].len() < cap)
            .min_by(|&a, &b| loads[a].total_cmp(&loads[b]))
        else {
            continue;
        };
        let mut best: Option<(f64, usize, usize)> = None;
        for q in (0..n).filter(|&q| q != p && !packs[q].iter().any(|x| x.0 == e)) {
            for (j, x) in packs[q].iter().enumerate() {
                if packs[p].iter().any(|y| y.0 == x.0) {
                    continue;
                }
                let d = (x.1 - w).abs();
                if best.is_none_or(|b| d < b.0) {
                    best = Some((d, q, j));
                }
            }
        }
        if let Some((_, q, j)) = best {
            let x = packs[q].swap_remove(j);
            loads[q] += w - x.1;
            loads[p] += x.1;
            packs[q].push((e, w));
            packs[p].push(x);
        }
    }
    packs
        .into_iter()
        .map(|p| p.into_iter().map(|x| x.0).collect())
        .collect()
}

/// Which swaps a local search may make: `(layout, rank a, expert leaving a, rank b, expert
/// leaving b)`; the no-duplicate rule is checked before it is asked.
pub type SwapFilter<'a> = &'a dyn Fn(&[Vec<u32>], usize, u32, usize, u32) -> bool;

/// Lowers the busiest rank's load by swapping one of its copies with a lighter copy on
/// another rank, best swap first, while some swap leaves both ranks below the old maximum.
/// Replica counts do not change, so every copy keeps its cost `item_cost[e]`.
pub fn refine_max(ranks: &mut [Vec<u32>], item_cost: &[f64], allowed: SwapFilter<'_>) {
    let n = ranks.len();
    let mut loads: Vec<f64> = ranks
        .iter()
        .map(|r| r.iter().map(|&e| item_cost[e as usize]).sum())
        .collect();
    let total_slots: usize = ranks.iter().map(Vec::len).sum();
    for _ in 0..(4 * total_slots + 16) {
        let Some(m) = (0..n).max_by(|&a, &b| loads[a].total_cmp(&loads[b]).then(b.cmp(&a))) else {
            return;
        };
        let lm = loads[m];
        let tol = lm * 1e-12;
        let mut best: Option<(f64, usize, usize, usize)> = None;
        for (i, &a) in ranks[m].iter().enumerate() {
            let ca = item_cost[a as usize];
            for s in (0..n).filter(|&s| s != m) {
                if ranks[s].contains(&a) {
                    continue;
                }
                for (j, &b) in ranks[s].iter().enumerate() {
                    let cb = item_cost[b as usize];
                    if cb >= ca {
                        continue;
                    }
                    let worst = (lm - ca + cb).max(loads[s] - cb + ca);
                    if worst >= lm - tol || best.is_some_and(|x| worst >= x.0) {
                        continue;
                    }
                    if ranks[m].contains(&b) || !allowed(ranks, m, a, s, b) {
                        continue;
                    }
                    best = Some((worst, i, s, j));
                }
            }
        }
        let Some((_, i, s, j)) = best else { return };
        let (a, b) = (ranks[m][i], ranks[s][j]);
        ranks[m][i] = b;
        ranks[s][j] = a;
        let d = item_cost[a as usize] - item_cost[b as usize];
        loads[m] -= d;
        loads[s] += d;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_fill_adds_the_next_ranks_experts() {
        let mut r = contiguous(8, 4);
        fill_ring(&mut r, 3);
        assert_eq!(
            r,
            vec![vec![0, 1, 2], vec![2, 3, 4], vec![4, 5, 6], vec![6, 7, 0]]
        );
    }

    #[test]
    fn pack_balances_and_never_duplicates() {
        // Classic LPT example: 3 packs of 2 items.
        let items = [(0, 5.0), (1, 4.0), (2, 3.0), (3, 3.0), (4, 2.0), (5, 1.0)];
        let p = pack(&items, 3, 2);
        assert_eq!(p, vec![vec![0, 5], vec![1, 4], vec![2, 3]]);
        // Three copies of expert 0 must land on three different packs.
        let items = [(0, 2.0), (0, 2.0), (0, 2.0), (1, 9.0), (2, 0.5), (3, 0.1)];
        let p = pack(&items, 3, 2);
        for rank in &p {
            assert_eq!(rank.len(), 2);
            assert_eq!(rank.iter().filter(|&&e| e == 0).count(), 1);
        }
    }

    #[test]
    fn pack_spread_spreads_groups() {
        // Two groups of four equal experts over two packs: two of each group per pack.
        let items: Vec<(u32, f64)> = (0..8).map(|e| (e, 1.0)).collect();
        let p = pack_spread(&items, 2, 4, 2);
        for rank in &p {
            assert_eq!(rank.iter().filter(|&&e| e < 4).count(), 2, "{p:?}");
        }
        // Without groups, plain balanced packing alternates by index.
        assert_eq!(pack(&items, 2, 4), vec![vec![0, 2, 4, 6], vec![1, 3, 5, 7]]);
    }

    #[test]
    fn refine_lowers_the_maximum() {
        let mut r = vec![vec![0, 1], vec![2, 3]];
        let cost = [5.0, 4.0, 1.0, 1.0];
        refine_max(&mut r, &cost, &|_, _, _, _, _| true);
        let loads: Vec<f64> = r
            .iter()
            .map(|x| x.iter().map(|&e| cost[e as usize]).sum())
            .collect();
        assert_eq!(loads.iter().cloned().fold(0.0, f64::max), 6.0);
    }
}
