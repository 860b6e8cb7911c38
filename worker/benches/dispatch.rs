//! Added latency of expert-parallel dispatch + combine per MoE layer (BENCHMARKS.md, "Expert
//! parallel: dispatch + combine latency (4 ranks, TCP loopback)").
//!
//! ```text
//! cargo bench -p moeflow-worker --bench dispatch
//! MOEFLOW_BENCH_ITERS=50 cargo bench -p moeflow-worker --bench dispatch   # shorter
//! ```
//!
//! One MoE layer at the `bench` preset's sizes (hidden 512, 32 SwiGLU experts of FFN width 256,
//! top-4) with random weights, random routings (4 distinct experts per token, weights summing
//! to 1) and random f32 hidden states, at 1 and 64 tokens per rank.
//!
//! - `ep`: 4 ranks as threads of this process, connected by the real TCP backend on loopback
//!   (`TcpComm`, reader and heartbeat threads as in production), each with an `EpDispatch`
//!   over the contiguous plan and the 8 experts that plan gives it. Every iteration starts
//!   with a barrier (not timed); then every rank times one `routed` call. The communicator is
//!   wrapped to time its two all-to-alls, which splits a call into: the dispatch all-to-all,
//!   the time between the two all-to-alls (decoding, the experts hosted here, encoding), the
//!   combine all-to-all (which also waits for the slowest rank's experts) and the rest
//!   (planning, packing, summing the combine).
//! - `expert work alone`: each rank's share of the expert work of one EP call (the rows and
//!   (expert, weight) pairs it receives), run through `LayerExperts::compute` in one thread
//!   with the rest of the benchmark idle: what a rank with a device of its own would compute.
//! - `local`: the baseline, the same x and routing through `LocalDispatch` with all 32
//!   experts in one thread (the rest of the machine idle).
//! - `local x4`: the same, but 4 threads at once, each on its own rank's inputs, started
//!   together by a barrier every iteration: the CPU contention the 4 EP ranks also see on
//!   this machine, without any communication.
//!
//! Latencies are per call, pooled over the 4 ranks (EP, local x4) or the 4 ranks' inputs in
//! turn (local). Added latency = EP median - baseline median. The bytes per call come from
//! `EpDispatch::stats()` (counted over the timed iterations only).

use std::net::TcpListener;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use moeflow_comm::{CommError, CommStats, Communicator, GroupIdentity, TcpComm, TcpConfig};
use moeflow_placement::{PlacementPlan, PlanTarget};
use moeflow_worker::group::EpDispatch;
use moeflow_worker::moe::{
    Assignment, LayerExperts, LocalDispatch, MoeDispatch, Routing, WeightApplication,
};
use moeflow_worker::nn::SwiGlu;
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

const RANKS: usize = 4;
const HIDDEN: usize = 512;
const EXPERTS: usize = 32;
const TOP_K: usize = 4;
const FFN: usize = 256;
const TOKENS: [usize; 2] = [1, 64];
const WARMUP: usize = 20;
const LAYER: usize = 0;

/// A communicator that records when each all-to-all started and ended.
struct Timed<C> {
    inner: C,
    a2a: Vec<(Instant, Instant)>,
}

impl<C: Communicator> Communicator for Timed<C> {
    fn rank(&self) -> usize {
        self.inner.rank()
    }

    fn world_size(&self) -> usize {
        self.inner.world_size()
    }

    fn all_to_all_v(&mut self, send: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>, CommError> {
        let t0 = Instant::now();
        let r = self.inner.all_to_all_v(send);
        self.a2a.push((t0, Instant::now()));
        r
    }

    fn all_gather(&mut self, data: &[u8]) -> Result<Vec<Vec<u8>>, CommError> {
        self.inner.all_gather(data)
    }

    fn barrier(&mut self) -> Result<(), CommError> {
        self.inner.barrier()
    }

    fn send(&mut self, peer: usize, tag: u64, data: &[u8]) -> Result<(), CommError> {
        self.inner.send(peer, tag, data)
    }

    fn recv(&mut self, peer: usize, tag: u64) -> Result<Vec<u8>, CommError> {
        self.inner.recv(peer, tag)
    }

    fn stats(&self) -> CommStats {
        self.inner.stats()
    }
}

/// Normal random `[rows, cols]` tensor with standard deviation `scale`.
fn randn(rng: &mut ChaCha8Rng, rows: usize, cols: usize, scale: f32) -> Tensor {
    let v: Vec<f32> = (0..rows * cols)
        .map(|_| scale * <StandardNormal as Distribution<f32>>::sample(&StandardNormal, rng))
        .collect();
    Tensor::from_vec(v, (rows, cols), &Device::Cpu).expect("random tensor")
}

fn random_routing(rng: &mut ChaCha8Rng, tokens: usize) -> Routing {
    let mut ids = Vec::with_capacity(tokens * TOP_K);
    let mut weights = Vec::with_capacity(tokens * TOP_K);
    for _ in 0..tokens {
        let w: Vec<f32> = (0..TOP_K).map(|_| rng.random::<f32>() + 0.05).collect();
        let sum: f32 = w.iter().sum();
        for (e, wk) in sample(rng, EXPERTS, TOP_K).into_iter().zip(w) {
            ids.push(e as u32);
            weights.push(wk / sum);
        }
    }
    Routing {
        top_k: TOP_K,
        ids,
        weights,
        apply: WeightApplication::Output,
    }
}

fn layer_experts(all: &[SwiGlu], hosted: &[u32]) -> LayerExperts {
    let mut le = LayerExperts::new(LAYER, EXPERTS, HIDDEN);
    for &e in hosted {
        le.insert(e, all[e as usize].clone());
    }
    le
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Median and 90th percentile (nearest rank) in microseconds.
fn med_p90(samples: &mut [f64]) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    let at =
        |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    (at(0.5), at(0.9))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("a");
    let b = b.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("b");
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// What one EP rank measured.
#[derive(Default)]
struct RankResult {
    total: Vec<f64>,
    a2a: Vec<f64>,
    dispatch_a2a: Vec<f64>,
    combine_a2a: Vec<f64>,
    between: Vec<f64>,
    bytes_sent_remote: u64,
    bytes_received_remote: u64,
    remote_selections: u64,
    selections: u64,
    mean_destinations: f64,
    max_diff: f32,
}

fn run_ep(
    all: &[SwiGlu],
    full: &LayerExperts,
    plan: &PlacementPlan,
    xs: &[Tensor],
    routings: &[Routing],
    iters: usize,
) -> Vec<RankResult> {
    let listeners: Vec<TcpListener> = (0..RANKS)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let addrs: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().expect("addr").to_string())
        .collect();
    let identity = GroupIdentity {
        group_id: "bench-dispatch".into(),
        model_fingerprint: "bench-preset-layer".into(),
        plan_version: 1,
    };
    thread::scope(|s| {
        let handles: Vec<_> = listeners
            .into_iter()
            .enumerate()
            .map(|(rank, l)| {
                let addrs = addrs.clone();
                let identity = identity.clone();
                s.spawn(move || {
                    let comm = TcpComm::connect(l, rank, addrs, identity, TcpConfig::default())
                        .expect("group forms");
                    let timed = Timed {
                        inner: comm,
                        a2a: Vec::new(),
                    };
                    let mut ep = EpDispatch::new(timed, plan).expect("dispatch");
                    let hosted = &plan.layer(LAYER).expect("plan layer")[rank];
                    let local = layer_experts(all, hosted);
                    let (x, routing) = (&xs[rank], &routings[rank]);
                    let mut res = RankResult::default();
                    for i in 0..WARMUP + iters {
                        if i == WARMUP {
                            ep.take_stats();
                        }
                        ep.comm_mut().barrier().expect("barrier");
                        ep.comm_mut().a2a.clear();
                        let t0 = Instant::now();
                        let y = ep.routed(LAYER, x, routing, &local).expect("ep routed");
                        let t1 = Instant::now();
                        if i == 0 {
                            let want = full.compute_routing(x, routing).expect("reference");
                            res.max_diff = max_abs_diff(&y, &want);
                        }
                        if i >= WARMUP {
                            let a = &ep.comm().a2a;
                            assert_eq!(a.len(), 2, "dispatch and combine");
                            res.total.push(us(t1 - t0));
                            res.a2a.push(us(a[0].1 - a[0].0) + us(a[1].1 - a[1].0));
                            res.dispatch_a2a.push(us(a[0].1 - a[0].0));
                            res.combine_a2a.push(us(a[1].1 - a[1].0));
                            res.between.push(us(a[1].0 - a[0].1));
                        }
                    }
                    let st = ep.stats().layers.get(&LAYER).expect("layer stats").clone();
                    res.bytes_sent_remote = st.bytes_sent_remote(rank);
                    res.bytes_received_remote = st
                        .bytes_received
                        .iter()
                        .enumerate()
                        .filter(|(r, _)| *r != rank)
                        .map(|(_, b)| b)
                        .sum();
                    res.remote_selections = st.remote_selections;
                    res.selections = st.selections;
                    res.mean_destinations = st.mean_destinations();
                    res
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("rank thread"))
            .collect()
    })
}

/// The rows and assignments rank `rank` computes inside one EP call (contiguous plan, no
/// replicas, so every selection runs on its expert's only host), in arrival order.
fn rank_work(
    plan: &PlacementPlan,
    xs: &[Tensor],
    routings: &[Routing],
    rank: usize,
) -> Option<(Tensor, Vec<Assignment>)> {
    let mut rows = Vec::new();
    let mut assignments = Vec::new();
    for (x, routing) in xs.iter().zip(routings) {
        for t in 0..routing.num_tokens() {
            let (ids, weights) = routing.token(t);
            let mut any = false;
            for (&expert, &weight) in ids.iter().zip(weights) {
                if plan.hosts(LAYER, rank, expert) {
                    any = true;
                    assignments.push(Assignment {
                        row: rows.len() as u32,
                        expert,
                        weight,
                    });
                }
            }
            if any {
                rows.push(x.get(t).expect("row"));
            }
        }
    }
    if rows.is_empty() {
        return None;
    }
    Some((Tensor::stack(&rows, 0).expect("stack"), assignments))
}

/// Median time (us) of rank `rank`'s share of the expert work of one EP call, run alone in
/// this thread (0 when the rank gets no work).
fn run_rank_work_alone(
    all: &[SwiGlu],
    plan: &PlacementPlan,
    xs: &[Tensor],
    routings: &[Routing],
    rank: usize,
    iters: usize,
) -> f64 {
    let Some((x, assignments)) = rank_work(plan, xs, routings, rank) else {
        return 0.0;
    };
    let local = layer_experts(all, &plan.layer(LAYER).expect("plan layer")[rank]);
    let n = x.dims()[0];
    let mut out = Vec::with_capacity(iters);
    for i in 0..WARMUP + iters {
        let t0 = Instant::now();
        let y = local
            .compute(&x, &assignments, WeightApplication::Output, n)
            .expect("rank work");
        let t1 = Instant::now();
        std::hint::black_box(y);
        if i >= WARMUP {
            out.push(us(t1 - t0));
        }
    }
    med_p90(&mut out).0
}

fn run_local(full: &LayerExperts, xs: &[Tensor], routings: &[Routing], iters: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(iters);
    for i in 0..WARMUP + iters {
        let r = i % RANKS;
        let t0 = Instant::now();
        let y = LocalDispatch
            .routed(LAYER, &xs[r], &routings[r], full)
            .expect("local routed");
        let t1 = Instant::now();
        std::hint::black_box(y);
        if i >= WARMUP {
            out.push(us(t1 - t0));
        }
    }
    out
}

fn run_local_x4(
    full: &LayerExperts,
    xs: &[Tensor],
    routings: &[Routing],
    iters: usize,
) -> Vec<f64> {
    let barrier = Barrier::new(RANKS);
    thread::scope(|s| {
        let handles: Vec<_> = (0..RANKS)
            .map(|r| {
                let barrier = &barrier;
                s.spawn(move || {
                    let mut out = Vec::with_capacity(iters);
                    for i in 0..WARMUP + iters {
                        barrier.wait();
                        let t0 = Instant::now();
                        let y = LocalDispatch
                            .routed(LAYER, &xs[r], &routings[r], full)
                            .expect("local routed");
                        let t1 = Instant::now();
                        std::hint::black_box(y);
                        if i >= WARMUP {
                            out.push(us(t1 - t0));
                        }
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("local thread"))
            .collect()
    })
}

fn main() {
    let iters: usize = std::env::var("MOEFLOW_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mut rng = ChaCha8Rng::seed_from_u64(20240603);
    let all: Vec<SwiGlu> = (0..EXPERTS)
        .map(|_| {
            let gate_up = randn(&mut rng, HIDDEN, 2 * FFN, 1.0 / (HIDDEN as f32).sqrt());
            let down = randn(&mut rng, FFN, HIDDEN, 1.0 / (FFN as f32).sqrt());
            SwiGlu::from_input_major(gate_up, down).expect("expert")
        })
        .collect();
    let all_ids: Vec<u32> = (0..EXPERTS as u32).collect();
    let full = layer_experts(&all, &all_ids);
    let plan = PlacementPlan::contiguous(
        &PlanTarget {
            num_experts: EXPERTS,
            moe_layers: vec![LAYER],
        },
        RANKS,
    )
    .expect("contiguous plan");

    println!(
        "dispatch + combine per MoE layer: {RANKS} ranks over TCP loopback, hidden {HIDDEN}, \
         {EXPERTS} experts (FFN {FFN}), top-{TOP_K}, f32, {iters} timed iterations after {WARMUP} \
         warm-up, rayon threads {}",
        rayon::current_num_threads()
    );
    let mut latency_rows = Vec::new();
    let mut split_rows = Vec::new();
    let mut rank_rows = Vec::new();
    for &t in &TOKENS {
        let xs: Vec<Tensor> = (0..RANKS)
            .map(|_| randn(&mut rng, t, HIDDEN, 1.0))
            .collect();
        let routings: Vec<Routing> = (0..RANKS).map(|_| random_routing(&mut rng, t)).collect();

        let (l_med, l_p90) = med_p90(&mut run_local(&full, &xs, &routings, iters));
        let (l4_med, l4_p90) = med_p90(&mut run_local_x4(&full, &xs, &routings, iters));
        let alone: Vec<f64> = (0..RANKS)
            .map(|r| run_rank_work_alone(&all, &plan, &xs, &routings, r, iters))
            .collect();
        let ranks = run_ep(&all, &full, &plan, &xs, &routings, iters);

        let pooled = |f: fn(&RankResult) -> &Vec<f64>| -> (f64, f64) {
            med_p90(&mut ranks.iter().flat_map(|r| f(r).clone()).collect::<Vec<_>>())
        };
        let (e_med, e_p90) = pooled(|r| &r.total);
        let (a_med, _) = pooled(|r| &r.a2a);
        let (d_med, _) = pooled(|r| &r.dispatch_a2a);
        let (c_med, _) = pooled(|r| &r.combine_a2a);
        let (b_med, _) = pooled(|r| &r.between);
        let slowest = alone.iter().copied().fold(0.0, f64::max);
        latency_rows.push(format!(
            "| {t} | {l_med:.0} / {l_p90:.0} | {l4_med:.0} / {l4_p90:.0} | {e_med:.0} / {e_p90:.0} \
             | {:.0} | {:.0} | {:.2} | {:.2} |",
            e_med - l_med,
            e_med - l4_med,
            e_med / l_med,
            e_med / l4_med,
        ));
        split_rows.push(format!(
            "| {t} | {e_med:.0} | {a_med:.0} | {d_med:.0} | {c_med:.0} | {b_med:.0} ({:.0}%) \
             | {slowest:.0} ({:.0}%) | {:.0} |",
            100.0 * b_med / e_med,
            100.0 * slowest / e_med,
            e_med - slowest,
        ));
        let max_diff = ranks.iter().map(|r| r.max_diff).fold(0.0, f32::max);
        let n = iters as f64;
        for (rank, r) in ranks.iter().enumerate() {
            let (m, p) = med_p90(&mut r.total.clone());
            let (bm, _) = med_p90(&mut r.between.clone());
            rank_rows.push(format!(
                "| {t} | {rank} | {m:.0} / {p:.0} | {bm:.0} | {:.0} | {:.0} | {:.0} | {:.2} / {} \
                 | {:.2} | {max_diff:.1e} |",
                alone[rank],
                r.bytes_sent_remote as f64 / n,
                r.bytes_received_remote as f64 / n,
                r.remote_selections as f64 / n,
                r.selections / iters as u64,
                r.mean_destinations,
            ));
        }
    }
    println!();
    println!(
        "| tokens/rank | local median / p90 (us) | local x4 median / p90 (us) | EP median / p90 (us) \
         | added vs local (us) | added vs local x4 (us) | EP / local | EP / local x4 |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    latency_rows.iter().for_each(|r| println!("{r}"));
    println!();
    println!(
        "| tokens/rank | EP median (us) | both all-to-alls median (us) | dispatch all-to-all \
         median (us) | combine all-to-all median (us) | between the all-to-alls \
         median (us, share of EP) | slowest rank's expert work alone (us, share of EP) \
         | EP - slowest rank's work alone (us) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    split_rows.iter().for_each(|r| println!("{r}"));
    println!();
    println!(
        "| tokens/rank | rank | EP median / p90 (us) | between median (us) | expert work alone (us) \
         | bytes sent to other ranks per call | bytes received from other ranks per call \
         | remote / all selections per call | mean distinct destination ranks per token \
         | max abs diff EP vs local |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    rank_rows.iter().for_each(|r| println!("{r}"));
}
