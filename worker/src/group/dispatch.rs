//! Dispatch and combine over a communicator.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use moeflow_comm::Communicator;
use moeflow_placement::{PlacementPlan, ReplicaSelector};

use super::stats::EpStats;
use super::wire::{
    bytes_to_rows, decode_dispatch, elem_size, encode_dispatch, rows_to_bytes, TokenWork,
};
use crate::error::{ModelError, Result};
use crate::moe::{Assignment, LayerExperts, MoeDispatch, Routing};

/// Expert-parallel [`MoeDispatch`]: this rank's tokens go to the ranks hosting their experts
/// and come back as one weighted sum per (token, rank).
pub struct EpDispatch<C: Communicator> {
    comm: C,
    selector: ReplicaSelector,
    stats: EpStats,
}

impl<C: Communicator> std::fmt::Debug for EpDispatch<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpDispatch")
            .field("rank", &self.comm.rank())
            .field("world_size", &self.comm.world_size())
            .finish()
    }
}

impl<C: Communicator> EpDispatch<C> {
    /// `plan` must have been validated for the model and have `comm.world_size()` ranks.
    pub fn new(comm: C, plan: &PlacementPlan) -> Result<Self> {
        if plan.num_ranks != comm.world_size() {
            return Err(ModelError::Dispatch(format!(
                "plan is for {} ranks, the group has {}",
                plan.num_ranks,
                comm.world_size()
            )));
        }
        let stats = EpStats::new(comm.rank(), comm.world_size());
        Ok(Self {
            selector: ReplicaSelector::new(plan),
            comm,
            stats,
        })
    }

    pub fn stats(&self) -> &EpStats {
        &self.stats
    }

    /// Returns the counters accumulated so far and starts new ones.
    pub fn take_stats(&mut self) -> EpStats {
        std::mem::replace(
            &mut self.stats,
            EpStats::new(self.comm.rank(), self.comm.world_size()),
        )
    }

    pub fn comm(&self) -> &C {
        &self.comm
    }

    pub fn comm_mut(&mut self) -> &mut C {
        &mut self.comm
    }
}

impl<C: Communicator> MoeDispatch for EpDispatch<C> {
    fn routed(
        &mut self,
        layer: usize,
        x: &Tensor,
        routing: &Routing,
        local: &LayerExperts,
    ) -> Result<Tensor> {
        let started = std::time::Instant::now();
        let world = self.comm.world_size();
        let rank = self.comm.rank();
        let dtype = x.dtype();
        let device = x.device().clone();
        let hidden = x.dims().get(1).copied().unwrap_or(0);
        let esz = elem_size(dtype)?;
        let row_bytes = hidden * esz;
        let tokens = routing.num_tokens();
        let num_experts = local.num_experts();
        let stats = self.stats.layer_mut(layer, num_experts);

        // 1. Decide where each selection runs; one message entry per (token, rank).
        let mut dest_tokens: Vec<Vec<usize>> = vec![Vec::new(); world];
        let mut dest_work: Vec<Vec<TokenWork>> = vec![Vec::new(); world];
        let mut load = vec![0usize; world];
        for t in 0..tokens {
            let (ids, weights) = routing.token(t);
            let mut by_rank: BTreeMap<usize, Vec<(u32, f32)>> = BTreeMap::new();
            for (&e, &w) in ids.iter().zip(weights) {
                let r = self
                    .selector
                    .choose(layer, e, rank, &mut load)
                    .ok_or(ModelError::ExpertNotHosted { layer, expert: e })?;
                by_rank.entry(r).or_default().push((e, w));
                stats.selections += 1;
                if r != rank {
                    stats.remote_selections += 1;
                }
            }
            if let Some(h) = stats.dest_histogram.get_mut(by_rank.len()) {
                *h += 1;
            }
            for (r, pairs) in by_rank {
                dest_tokens[r].push(t);
                dest_work[r].push(TokenWork { pairs });
            }
        }

        // 2. Dispatch.
        let all_rows = if tokens > 0 {
            rows_to_bytes(x)?
        } else {
            Vec::new()
        };
        let mut send = Vec::with_capacity(world);
        for r in 0..world {
            let mut rows = Vec::with_capacity(dest_tokens[r].len() * row_bytes);
            for &t in &dest_tokens[r] {
                rows.extend_from_slice(&all_rows[t * row_bytes..(t + 1) * row_bytes]);
            }
            let msg = if dest_work[r].is_empty() {
                Vec::new()
            } else {
                encode_dispatch(&dest_work[r], &rows)
            };
            stats.bytes_sent[r] += msg.len() as u64;
            send.push(msg);
        }
        let received = self.comm.all_to_all_v(send)?;
        if received.len() != world {
            return Err(ModelError::Dispatch(format!(
                "all-to-all returned {} parts for {world} ranks",
                received.len()
            )));
        }

        // 3. Run the experts hosted here on everything received.
        let mut rows_in = Vec::new();
        let mut assignments = Vec::new();
        let mut from_source = Vec::with_capacity(world);
        let mut n = 0u32;
        for (s, msg) in received.iter().enumerate() {
            stats.bytes_received[s] += msg.len() as u64;
            let (work, rows) = decode_dispatch(msg, s, row_bytes)?;
            from_source.push(work.len());
            for w in work {
                for (e, weight) in w.pairs {
                    if let Some(c) = stats.tokens_per_expert.get_mut(e as usize) {
                        *c += 1;
                    }
                    assignments.push(Assignment {
                        row: n,
                        expert: e,
                        weight,
                    });
                }
                n += 1;
            }
            rows_in.extend_from_slice(rows);
        }
        let n = n as usize;
        let compute_start = std::time::Instant::now();
        let y = if n > 0 {
            let xr = bytes_to_rows(&rows_in, n, hidden, dtype, &device)?;
            rows_to_bytes(&local.compute(&xr, &assignments, routing.apply, n)?)?
        } else {
            Vec::new()
        };
        stats.compute_seconds += compute_start.elapsed().as_secs_f64();

        // 4. Combine: results go back to their origin in arrival order.
        let mut back = Vec::with_capacity(world);
        let mut off = 0;
        for (s, &cnt) in from_source.iter().enumerate() {
            let part = y[off * row_bytes..(off + cnt) * row_bytes].to_vec();
            off += cnt;
            stats.bytes_sent[s] += part.len() as u64;
            back.push(part);
        }
        let results = self.comm.all_to_all_v(back)?;
        let mut out = vec![0f32; tokens * hidden];
        for (r, part) in results.iter().enumerate() {
            stats.bytes_received[r] += part.len() as u64;
            let want = dest_tokens[r].len() * row_bytes;
            if part.len() != want {
                return Err(ModelError::Dispatch(format!(
                    "malformed combine from rank {r}: {} bytes, expected {want}",
                    part.len()
                )));
            }
            if want == 0 {
                continue;
            }
            let rows = bytes_to_rows(part, dest_tokens[r].len(), hidden, dtype, &device)?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            for (i, &t) in dest_tokens[r].iter().enumerate() {
                for (o, v) in out[t * hidden..(t + 1) * hidden]
                    .iter_mut()
                    .zip(&rows[i * hidden..(i + 1) * hidden])
                {
                    *o += v;
                }
            }
        }
        stats.calls += 1;
        stats.routed_seconds += started.elapsed().as_secs_f64();
        record_metrics(layer, rank, stats);
        Ok(Tensor::from_vec(out, (tokens, hidden), &device)?.to_dtype(dtype)?)
    }
}

/// Publishes the layer's running totals through the `metrics` facade (absolute values, so a
/// scrape sees the same numbers as [`EpStats`]).
fn record_metrics(layer: usize, rank: usize, s: &super::stats::LayerStats) {
    let l = layer.to_string();
    let r = rank.to_string();
    let computed: u64 = s.tokens_per_expert.iter().sum();
    metrics::counter!("moeflow:expert_load_tokens_total", "layer" => l.clone(), "rank" => r.clone()).absolute(computed);
    metrics::counter!("moeflow:all_to_all_bytes_total", "layer" => l.clone(), "rank" => r.clone(), "direction" => "sent")
        .absolute(s.bytes_sent_remote(rank));
    let recv_remote: u64 = s
        .bytes_received
        .iter()
        .enumerate()
        .filter(|(p, _)| *p != rank)
        .map(|(_, b)| b)
        .sum();
    metrics::counter!("moeflow:all_to_all_bytes_total", "layer" => l, "rank" => r, "direction" => "received")
        .absolute(recv_remote);
}

impl<C: Communicator> crate::runtime::DispatchStats for EpDispatch<C> {
    fn stats_json(&self) -> Option<String> {
        serde_json::to_string(&self.stats).ok()
    }

    fn agree(&mut self, value: u64) -> Result<Vec<u64>> {
        self.comm
            .all_gather(&value.to_le_bytes())?
            .iter()
            .enumerate()
            .map(|(r, b)| {
                <[u8; 8]>::try_from(b.as_slice())
                    .map(u64::from_le_bytes)
                    .map_err(|_| {
                        ModelError::Dispatch(format!(
                            "rank {r} sent {} bytes where a plan version (8) was expected",
                            b.len()
                        ))
                    })
            })
            .collect()
    }

    fn set_plan(&mut self, plan: &PlacementPlan) -> Result<()> {
        if plan.num_ranks != self.comm.world_size() {
            return Err(ModelError::Dispatch(format!(
                "plan is for {} ranks, the group has {}",
                plan.num_ranks,
                self.comm.world_size()
            )));
        }
        self.selector = ReplicaSelector::new(plan);
        self.comm.set_plan_version(plan.fingerprint());
        Ok(())
    }
}
