//! Admission: which waiting requests start, and on which ranks.
//!
//! A request is admitted, in arrival order, when a decode rank can reserve its worst case
//! (prompt + max_tokens) in KV blocks and a free running slot and, with a usable prefill
//! group, a prefill rank can hold its prompt. The [`Budget`] of each group keeps those
//! reservations; its [`RankPick`](pick::RankPick) policy chooses among the ranks with room
//! (by default [`LeastLoaded`](least_loaded::LeastLoaded)). The first request that does not
//! fit stops admission, so requests are never overtaken.

mod budget;
mod least_loaded;
mod pick;

use std::sync::atomic::Ordering;

pub(crate) use budget::Budget;

use super::sequence::{Role, Running};
use super::SchedState;
use crate::trace::TraceAssembler;
use moeflow_api::GenerateRequest;

/// The KV blocks a request reserves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Need {
    /// On its decode rank: prompt + max_tokens, the most it can ever hold.
    pub decode: usize,
    /// On a prefill rank: the prompt and the first sampled token.
    pub prefill: usize,
}

impl Need {
    pub fn of(req: &GenerateRequest, block_size: usize) -> Self {
        let bs = block_size.max(1);
        Self {
            decode: (req.prompt.len() + req.max_tokens as usize).div_ceil(bs),
            prefill: (req.prompt.len() + 1).div_ceil(bs),
        }
    }
}

impl SchedState {
    /// Admits waiting requests, in order, while their ranks have room.
    pub(super) fn admit(&mut self) {
        let use_prefill = self.prefill_usable();
        let (max_running, max_blocks) =
            (self.cfg.max_running_per_rank, self.cfg.kv_blocks_per_rank);
        while let Some(w) = self.waiting.front() {
            let need = Need::of(&w.req, self.cfg.block_size);
            let budget = &self.decode.budget;
            let Some(decode_rank) = budget.pick(&w.req, need.decode, max_running, max_blocks)
            else {
                break;
            };
            let prefill_rank = match (use_prefill, self.prefill.as_ref()) {
                (true, Some(p)) => {
                    match p.budget.pick(&w.req, need.prefill, max_running, max_blocks) {
                        Some(r) => Some(r),
                        None => break,
                    }
                }
                _ => None,
            };
            let Some(w) = self.waiting.pop_front() else {
                break;
            };
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            metrics::histogram!("moeflow:request_queue_time_seconds")
                .record(w.arrived.elapsed().as_secs_f64());
            let seq = self.next_seq;
            self.next_seq += 1;
            self.decode.budget.take(decode_rank, need.decode);
            if let (Some(p), Some(pr)) = (self.prefill.as_mut(), prefill_rank) {
                p.budget.take(pr, need.prefill);
            }
            self.by_id.insert(w.req.request_id.clone(), seq);
            let trace = self
                .cfg
                .trace
                .as_ref()
                .filter(|rec| rec.sampled(&w.req.request_id))
                .map(|_| {
                    TraceAssembler::new(
                        w.req.request_id.clone(),
                        w.req.workload.clone(),
                        w.req.prompt.len(),
                        Some(w.arrived_ms),
                    )
                });
            let at = match prefill_rank {
                Some(pr) => (Role::Prefill, pr),
                None => (Role::Decode, decode_rank),
            };
            self.running.insert(
                seq,
                Running {
                    req: w.req,
                    tx: w.tx,
                    at,
                    decode_rank,
                    prefill_rank,
                    prefilled: 0,
                    generated: Vec::new(),
                    decode_blocks: need.decode,
                    prefill_blocks: if prefill_rank.is_some() {
                        need.prefill
                    } else {
                        0
                    },
                    sampling_sent: false,
                    trace,
                },
            );
        }
    }
}
