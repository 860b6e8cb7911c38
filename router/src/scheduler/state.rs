//! The scheduling task's state and loop.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use moeflow_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot};

use super::{ById, Command, SchedulerConfig, Shared};
use crate::api::{FinishReason, GenerateRequest, RankLoad, TokenEvent, Usage};
use crate::group::WorkerGroup;

struct Waiting {
    req: GenerateRequest,
    tx: mpsc::Sender<TokenEvent>,
    arrived: Instant,
}

struct Running {
    req: GenerateRequest,
    tx: mpsc::Sender<TokenEvent>,
    rank: usize,
    /// Prompt tokens already in the rank's KV cache.
    prefilled: usize,
    generated: Vec<u32>,
    /// KV blocks reserved on the rank for prompt + max_tokens.
    blocks: usize,
    sampling_sent: bool,
}

pub(crate) struct SchedState {
    group: WorkerGroup,
    cfg: SchedulerConfig,
    shared: Arc<Shared>,
    waiting: VecDeque<Waiting>,
    running: HashMap<u64, Running>,
    by_id: ById,
    next_seq: u64,
    step_id: u64,
    rank_blocks: Vec<usize>,
    rank_running: Vec<usize>,
    drains: Vec<oneshot::Sender<()>>,
    broken: bool,
}

impl SchedState {
    pub fn new(
        group: WorkerGroup,
        cfg: SchedulerConfig,
        _max_context: usize,
        shared: Arc<Shared>,
    ) -> Self {
        let n = group.world_size();
        Self {
            group,
            cfg,
            shared,
            waiting: VecDeque::new(),
            running: HashMap::new(),
            by_id: HashMap::new(),
            next_seq: 1,
            step_id: 0,
            rank_blocks: vec![0; n],
            rank_running: vec![0; n],
            drains: Vec::new(),
            broken: false,
        }
    }

    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        loop {
            // Block for work only when there is nothing to step.
            if self.running.is_empty() && (self.waiting.is_empty() || self.broken) {
                self.finish_drains();
                match rx.recv().await {
                    Some(cmd) => self.handle(cmd),
                    None => return,
                }
            }
            while let Ok(cmd) = rx.try_recv() {
                self.handle(cmd);
            }
            self.drop_cancelled().await;
            if self.broken {
                self.fail_waiting("the worker group is down");
                continue;
            }
            self.admit();
            self.publish_gauges();
            if self.running.is_empty() {
                continue;
            }
            self.step().await;
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Submit(req, tx) => self.waiting.push_back(Waiting {
                req,
                tx,
                arrived: Instant::now(),
            }),
            Command::Abort(id, reply) => {
                let found =
                    if let Some(pos) = self.waiting.iter().position(|w| w.req.request_id == id) {
                        if let Some(w) = self.waiting.remove(pos) {
                            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
                            let _ = w.tx.try_send(TokenEvent::Finished {
                                reason: FinishReason::Abort,
                                usage: Usage {
                                    prompt_tokens: w.req.prompt.len() as u32,
                                    completion_tokens: 0,
                                },
                            });
                        }
                        true
                    } else if let Some(&seq) = self.by_id.get(&id) {
                        if let Some(r) = self.running.get_mut(&seq) {
                            // Mark by closing: the next iteration finishes it as aborted.
                            let _ = r.tx.try_send(TokenEvent::Finished {
                                reason: FinishReason::Abort,
                                usage: Usage {
                                    prompt_tokens: r.req.prompt.len() as u32,
                                    completion_tokens: r.generated.len() as u32,
                                },
                            });
                        }
                        self.pending_release(seq);
                        true
                    } else {
                        false
                    };
                let _ = reply.send(found);
            }
            Command::Loads(reply) => {
                let loads = (0..self.group.world_size())
                    .map(|r| RankLoad {
                        group: self.cfg.group_name.clone(),
                        rank: r as u32,
                        running_sequences: self.rank_running[r] as u32,
                        queued_tokens: self
                            .running
                            .values()
                            .filter(|s| s.rank == r)
                            .map(|s| (s.req.prompt.len() - s.prefilled) as u64)
                            .sum(),
                        kv_usage: self.rank_blocks[r] as f32
                            / self.cfg.kv_blocks_per_rank.max(1) as f32,
                    })
                    .collect();
                let _ = reply.send(loads);
            }
            Command::Drain(reply) => self.drains.push(reply),
        }
    }

    fn finish_drains(&mut self) {
        if self.running.is_empty() && self.waiting.is_empty() {
            for d in self.drains.drain(..) {
                let _ = d.send(());
            }
        }
    }

    /// Removes a running sequence from the books (its KV blocks are released by the caller).
    fn forget(&mut self, seq: u64) -> Option<Running> {
        let r = self.running.remove(&seq)?;
        self.by_id.remove(&r.req.request_id);
        self.rank_blocks[r.rank] = self.rank_blocks[r.rank].saturating_sub(r.blocks);
        self.rank_running[r.rank] = self.rank_running[r.rank].saturating_sub(1);
        Some(r)
    }

    fn pending_release(&mut self, seq: u64) {
        if let Some(r) = self.forget(seq) {
            let group = self.group.clone();
            tokio::spawn(async move {
                let _ = group.release(r.rank, vec![seq]).await;
            });
        }
    }

    /// Sequences whose client went away are aborted and their KV blocks freed at once.
    async fn drop_cancelled(&mut self) {
        let gone: Vec<u64> = self
            .running
            .iter()
            .filter(|(_, r)| r.tx.is_closed())
            .map(|(s, _)| *s)
            .collect();
        for seq in gone {
            metrics::counter!("moeflow:request_success_total", "finished_reason" => "abort")
                .increment(1);
            self.pending_release(seq);
        }
        let before = self.waiting.len();
        self.waiting.retain(|w| !w.tx.is_closed());
        let dropped = before - self.waiting.len();
        if dropped > 0 {
            self.shared.waiting.fetch_sub(dropped, Ordering::SeqCst);
        }
    }

    fn fail_waiting(&mut self, msg: &str) {
        for w in self.waiting.drain(..) {
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            let _ = w.tx.try_send(TokenEvent::Error {
                message: msg.to_string(),
            });
        }
    }

    /// Moves waiting requests to the least-loaded rank (by KV blocks, then running
    /// sequences) while that rank can hold their whole prompt + max_tokens.
    fn admit(&mut self) {
        while let Some(w) = self.waiting.front() {
            let blocks =
                (w.req.prompt.len() + w.req.max_tokens as usize).div_ceil(self.cfg.block_size);
            let best = (0..self.group.world_size())
                .filter(|&r| self.rank_running[r] < self.cfg.max_running_per_rank)
                .filter(|&r| self.rank_blocks[r] + blocks <= self.cfg.kv_blocks_per_rank)
                .min_by_key(|&r| (self.rank_blocks[r], self.rank_running[r], r));
            let Some(rank) = best else { break };
            let Some(w) = self.waiting.pop_front() else {
                break;
            };
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            metrics::histogram!("moeflow:request_queue_time_seconds")
                .record(w.arrived.elapsed().as_secs_f64());
            let seq = self.next_seq;
            self.next_seq += 1;
            self.rank_blocks[rank] += blocks;
            self.rank_running[rank] += 1;
            self.by_id.insert(w.req.request_id.clone(), seq);
            self.running.insert(
                seq,
                Running {
                    req: w.req,
                    tx: w.tx,
                    rank,
                    prefilled: 0,
                    generated: Vec::new(),
                    blocks,
                    sampling_sent: false,
                },
            );
        }
    }

    fn publish_gauges(&self) {
        metrics::gauge!("moeflow:num_requests_running").set(self.running.len() as f64);
        metrics::gauge!("moeflow:num_requests_waiting").set(self.waiting.len() as f64);
        let used: usize = self.rank_blocks.iter().sum();
        let cap = self.cfg.kv_blocks_per_rank * self.group.world_size().max(1);
        metrics::gauge!("moeflow:kv_cache_usage_perc").set(used as f64 / cap.max(1) as f64);
    }

    /// One step: every decoding sequence's last token, plus prompt chunks within the budget.
    async fn step(&mut self) {
        let n = self.group.world_size();
        let mut per_rank: Vec<Vec<pb::SeqChunk>> = vec![Vec::new(); n];
        let mut budget = self.cfg.prefill_token_budget;
        let mut seqs: Vec<u64> = self.running.keys().copied().collect();
        seqs.sort_unstable();
        for seq in seqs {
            let Some(r) = self.running.get_mut(&seq) else {
                continue;
            };
            let plen = r.req.prompt.len();
            let sampling = (!r.sampling_sent).then(|| pb::WorkerSampling {
                temperature: r.req.sampling.temperature,
                top_p: r.req.sampling.top_p,
                top_k: r.req.sampling.top_k,
                seed: r.req.sampling.seed,
            });
            let chunk = if r.prefilled < plen {
                if budget == 0 {
                    continue;
                }
                let take = (plen - r.prefilled).min(budget);
                budget -= take;
                let c = pb::SeqChunk {
                    seq_id: seq,
                    tokens: r.req.prompt[r.prefilled..r.prefilled + take].to_vec(),
                    start: r.prefilled as u32,
                    prompt: true,
                    sampling,
                    sample: r.prefilled + take == plen,
                };
                r.prefilled += take;
                c
            } else {
                let Some(&last) = r.generated.last() else {
                    continue;
                };
                pb::SeqChunk {
                    seq_id: seq,
                    tokens: vec![last],
                    start: (plen + r.generated.len() - 1) as u32,
                    prompt: false,
                    sampling,
                    sample: true,
                }
            };
            r.sampling_sent = true;
            per_rank[r.rank].push(chunk);
        }
        let step_id = self.step_id;
        self.step_id += 1;
        let result = self.group.step(step_id, per_rank, false).await;
        let responses = match result {
            Ok(r) => r,
            Err(e) => {
                let msg = format!("worker group {} failed: {e}", self.cfg.group_name);
                tracing::error!(%msg);
                self.broken = true;
                self.shared.healthy.store(false, Ordering::SeqCst);
                *self
                    .shared
                    .detail
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = e.to_string();
                let seqs: Vec<u64> = self.running.keys().copied().collect();
                for seq in seqs {
                    if let Some(r) = self.forget(seq) {
                        let _ = r.tx.try_send(TokenEvent::Error {
                            message: msg.clone(),
                        });
                        metrics::counter!("moeflow:request_success_total", "finished_reason" => "error").increment(1);
                    }
                }
                self.fail_waiting(&msg);
                return;
            }
        };
        for res in responses.into_iter().flat_map(|r| r.results) {
            if !res.sampled {
                continue;
            }
            let Some(r) = self.running.get_mut(&res.seq_id) else {
                continue;
            };
            r.generated.push(res.token);
            if r.tx
                .try_send(TokenEvent::Token {
                    id: res.token,
                    logprob: res.logprob,
                })
                .is_err()
            {
                self.pending_release(res.seq_id);
                continue;
            }
            let reason = if r.req.stop_token_ids.contains(&res.token) {
                Some(FinishReason::Stop)
            } else if r.generated.len() >= r.req.max_tokens as usize {
                Some(FinishReason::Length)
            } else {
                None
            };
            if let Some(reason) = reason {
                let usage = Usage {
                    prompt_tokens: r.req.prompt.len() as u32,
                    completion_tokens: r.generated.len() as u32,
                };
                let _ = r.tx.try_send(TokenEvent::Finished { reason, usage });
                self.pending_release(res.seq_id);
            }
        }
    }
}
