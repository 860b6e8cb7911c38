//! The scheduling task's state and loop.
//!
//! Sequences move through phases: waiting → prefill (on the prefill group, or on the decode
//! group in aggregated mode) → decode. With a prefill group, the sequence's KV cache and
//! sampler state move to the decode rank reserved at admission as soon as its prompt is done
//! (the first token is sampled on the prefill rank). Both groups step concurrently.

pub(crate) mod replan;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use moeflow_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot};

use super::{ById, Command, SchedulerConfig, Shared};
use crate::api::{ComponentHealth, FinishReason, GenerateRequest, RankLoad, TokenEvent, Usage};
use crate::group::{GroupError, WorkerGroup};
use crate::trace::TraceAssembler;

struct Waiting {
    req: GenerateRequest,
    tx: mpsc::Sender<TokenEvent>,
    arrived: Instant,
    /// Unix milliseconds of arrival, for the request's trace.
    arrived_ms: u64,
}

/// Which group a role refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Prefill,
    Decode,
}

struct Running {
    req: GenerateRequest,
    tx: mpsc::Sender<TokenEvent>,
    /// Where the sequence's KV cache is now.
    at: (Role, usize),
    /// The decode rank whose budget holds this sequence.
    decode_rank: usize,
    /// The prefill rank whose budget holds it until it moves (prefill group only).
    prefill_rank: Option<usize>,
    prefilled: usize,
    generated: Vec<u32>,
    decode_blocks: usize,
    prefill_blocks: usize,
    sampling_sent: bool,
    /// The request's trace so far, when it is sampled for recording.
    trace: Option<TraceAssembler>,
}

/// One worker group and the scheduler's books on it.
pub(crate) struct GroupState {
    pub group: WorkerGroup,
    pub name: String,
    rank_blocks: Vec<usize>,
    rank_running: Vec<usize>,
    broken: Option<String>,
}

impl GroupState {
    pub fn new(group: WorkerGroup, name: String) -> Self {
        let n = group.world_size();
        Self {
            group,
            name,
            rank_blocks: vec![0; n],
            rank_running: vec![0; n],
            broken: None,
        }
    }

    fn pick(&self, blocks: usize, cfg: &SchedulerConfig) -> Option<usize> {
        (0..self.group.world_size())
            .filter(|&r| self.rank_running[r] < cfg.max_running_per_rank)
            .filter(|&r| self.rank_blocks[r] + blocks <= cfg.kv_blocks_per_rank)
            .min_by_key(|&r| (self.rank_blocks[r], self.rank_running[r], r))
    }

    fn take(&mut self, rank: usize, blocks: usize) {
        self.rank_blocks[rank] += blocks;
        self.rank_running[rank] += 1;
    }

    fn give_back(&mut self, rank: usize, blocks: usize) {
        self.rank_blocks[rank] = self.rank_blocks[rank].saturating_sub(blocks);
        self.rank_running[rank] = self.rank_running[rank].saturating_sub(1);
    }

    pub fn health(&self) -> ComponentHealth {
        ComponentHealth {
            name: self.name.clone(),
            healthy: self.broken.is_none(),
            detail: self.broken.clone().unwrap_or_default(),
        }
    }
}

pub(crate) struct SchedState {
    decode: GroupState,
    prefill: Option<GroupState>,
    cfg: SchedulerConfig,
    shared: Arc<Shared>,
    waiting: VecDeque<Waiting>,
    running: HashMap<u64, Running>,
    by_id: ById,
    next_seq: u64,
    step_id: u64,
    drains: Vec<oneshot::Sender<()>>,
    /// The loop's own command sender, for background work that reports back.
    self_tx: mpsc::UnboundedSender<Command>,
    /// Groups with a placement switch in progress, and prepared switches to commit.
    switching: Vec<Role>,
    pending_commits: Vec<replan::PendingCommit>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn usage(r: &Running) -> Usage {
    Usage {
        prompt_tokens: r.req.prompt.len() as u32,
        completion_tokens: r.generated.len() as u32,
    }
}

impl SchedState {
    pub fn new(
        decode: GroupState,
        prefill: Option<GroupState>,
        cfg: SchedulerConfig,
        shared: Arc<Shared>,
        self_tx: mpsc::UnboundedSender<Command>,
    ) -> Self {
        let s = Self {
            decode,
            prefill,
            cfg,
            shared,
            waiting: VecDeque::new(),
            running: HashMap::new(),
            by_id: HashMap::new(),
            next_seq: 1,
            step_id: 0,
            drains: Vec::new(),
            self_tx,
            switching: Vec::new(),
            pending_commits: Vec::new(),
        };
        s.publish_health();
        s
    }

    fn prefill_usable(&self) -> bool {
        self.prefill.as_ref().is_some_and(|p| p.broken.is_none())
    }

    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        loop {
            // Block for work only when there is nothing to step.
            if self.running.is_empty() && (self.waiting.is_empty() || self.decode.broken.is_some())
            {
                // Idle: the gauges must show the empty state, not the last step's.
                self.publish_gauges();
                self.finish_drains();
                match rx.recv().await {
                    Some(cmd) => self.handle(cmd),
                    None => return,
                }
            }
            while let Ok(cmd) = rx.try_recv() {
                self.handle(cmd);
            }
            // Between two steps: the one place a placement switch may happen.
            self.commit_pending().await;
            self.drop_cancelled();
            if let Some(why) = self.decode.broken.clone() {
                self.fail_waiting(&format!("worker group {} is down: {why}", self.decode.name));
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
                arrived_ms: unix_ms(),
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
                        if let Some(r) = self.running.get(&seq) {
                            let _ = r.tx.try_send(TokenEvent::Finished {
                                reason: FinishReason::Abort,
                                usage: usage(r),
                            });
                        }
                        self.release(seq);
                        true
                    } else {
                        false
                    };
                let _ = reply.send(found);
            }
            Command::Loads(reply) => {
                let mut loads = Vec::new();
                for (role, g) in [
                    (Role::Prefill, self.prefill.as_ref()),
                    (Role::Decode, Some(&self.decode)),
                ] {
                    let Some(g) = g else { continue };
                    for r in 0..g.group.world_size() {
                        let queued: u64 = self
                            .running
                            .values()
                            .filter(|s| s.at == (role, r))
                            .map(|s| (s.req.prompt.len() - s.prefilled) as u64)
                            .sum();
                        loads.push(RankLoad {
                            group: g.name.clone(),
                            rank: r as u32,
                            running_sequences: g.rank_running[r] as u32,
                            queued_tokens: queued,
                            kv_usage: g.rank_blocks[r] as f32
                                / self.cfg.kv_blocks_per_rank.max(1) as f32,
                        });
                    }
                }
                let _ = reply.send(loads);
            }
            Command::Drain(reply) => self.drains.push(reply),
            Command::ApplyPlan(group, json, reply) => self.start_apply(group, json, reply),
            Command::PlanPrepared(p) => self.prepared(*p),
            Command::GetPlan(group, reply) => self.get_plan(group, reply),
        }
    }

    fn finish_drains(&mut self) {
        if self.running.is_empty() && self.waiting.is_empty() {
            for d in self.drains.drain(..) {
                let _ = d.send(());
            }
        }
    }

    fn group(&self, role: Role) -> &GroupState {
        match (role, &self.prefill) {
            (Role::Prefill, Some(p)) => p,
            _ => &self.decode,
        }
    }

    /// Removes a sequence from the books and frees its KV blocks wherever they are.
    fn release(&mut self, seq: u64) {
        let Some(r) = self.running.remove(&seq) else {
            return;
        };
        self.by_id.remove(&r.req.request_id);
        if let (Some(rec), Some(t)) = (self.cfg.trace.as_ref(), r.trace) {
            // A request that ended before its first step ran has no routing to record.
            if t.iterations() > 0 {
                rec.record(t.finish(Some(unix_ms())));
            }
        }
        self.decode.give_back(r.decode_rank, r.decode_blocks);
        if let (Some(p), Some(pr)) = (self.prefill.as_mut(), r.prefill_rank) {
            p.give_back(pr, r.prefill_blocks);
        }
        let group = self.group(r.at.0).group.clone();
        let rank = r.at.1;
        tokio::spawn(async move {
            let _ = group.release(rank, vec![seq]).await;
        });
    }

    /// Sequences whose client went away are aborted and their KV blocks freed at once.
    fn drop_cancelled(&mut self) {
        let gone: Vec<u64> = self
            .running
            .iter()
            .filter(|(_, r)| r.tx.is_closed())
            .map(|(s, _)| *s)
            .collect();
        for seq in gone {
            self.release(seq);
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

    /// Admits waiting requests while a decode rank (least loaded by KV blocks, then running
    /// sequences) can hold prompt + max_tokens and, with a prefill group, a prefill rank can
    /// hold the prompt.
    fn admit(&mut self) {
        let use_prefill = self.prefill_usable();
        while let Some(w) = self.waiting.front() {
            let total = w.req.prompt.len() + w.req.max_tokens as usize;
            let decode_blocks = total.div_ceil(self.cfg.block_size);
            let prefill_blocks = (w.req.prompt.len() + 1).div_ceil(self.cfg.block_size);
            let Some(decode_rank) = self.decode.pick(decode_blocks, &self.cfg) else {
                break;
            };
            let prefill_rank = match (use_prefill, self.prefill.as_ref()) {
                (true, Some(p)) => match p.pick(prefill_blocks, &self.cfg) {
                    Some(r) => Some(r),
                    None => break,
                },
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
            self.decode.take(decode_rank, decode_blocks);
            if let (Some(p), Some(pr)) = (self.prefill.as_mut(), prefill_rank) {
                p.take(pr, prefill_blocks);
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
                    decode_blocks,
                    prefill_blocks: if prefill_rank.is_some() {
                        prefill_blocks
                    } else {
                        0
                    },
                    sampling_sent: false,
                    trace,
                },
            );
        }
    }

    fn publish_gauges(&self) {
        metrics::gauge!("moeflow:num_requests_running").set(self.running.len() as f64);
        metrics::gauge!("moeflow:num_requests_waiting").set(self.waiting.len() as f64);
        for g in [Some(&self.decode), self.prefill.as_ref()]
            .into_iter()
            .flatten()
        {
            let used: usize = g.rank_blocks.iter().sum();
            let cap = self.cfg.kv_blocks_per_rank * g.group.world_size().max(1);
            metrics::gauge!("moeflow:kv_cache_usage_perc", "group" => g.name.clone())
                .set(used as f64 / cap.max(1) as f64);
        }
    }

    fn publish_health(&self) {
        let mut all = vec![self.decode.health()];
        if let Some(p) = &self.prefill {
            all.push(p.health());
        }
        self.shared
            .healthy
            .store(self.decode.broken.is_none(), Ordering::SeqCst);
        *self
            .shared
            .components
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = all;
    }

    /// The chunks of one group for this step: decode tokens, then prompt chunks in budget.
    fn chunks_for(&mut self, role: Role, budget: &mut usize) -> Vec<Vec<pb::SeqChunk>> {
        let n = self.group(role).group.world_size();
        let mut per_rank: Vec<Vec<pb::SeqChunk>> = vec![Vec::new(); n];
        let mut seqs: Vec<u64> = self
            .running
            .iter()
            .filter(|(_, r)| r.at.0 == role)
            .map(|(s, _)| *s)
            .collect();
        seqs.sort_unstable();
        for seq in seqs {
            let Some(r) = self.running.get_mut(&seq) else {
                continue;
            };
            let plen = r.req.prompt.len();
            let sampling = (!r.sampling_sent).then_some(pb::WorkerSampling {
                temperature: r.req.sampling.temperature,
                top_p: r.req.sampling.top_p,
                top_k: r.req.sampling.top_k,
                seed: r.req.sampling.seed,
                top_logprobs: r.req.sampling.top_logprobs,
            });
            let chunk = if r.prefilled < plen {
                if *budget == 0 {
                    continue;
                }
                let take = (plen - r.prefilled).min(*budget);
                *budget -= take;
                let c = pb::SeqChunk {
                    seq_id: seq,
                    tokens: r.req.prompt[r.prefilled..r.prefilled + take].to_vec(),
                    start: r.prefilled as u32,
                    prompt: true,
                    sampling,
                    sample: r.prefilled + take == plen,
                    trace: r.trace.is_some(),
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
                    trace: r.trace.is_some(),
                }
            };
            r.sampling_sent = true;
            per_rank[r.at.1].push(chunk);
        }
        per_rank
    }

    /// Runs one step on each group that has work, concurrently, then streams the results.
    async fn step(&mut self) {
        let mut budget = self.cfg.prefill_token_budget;
        let prefill_chunks = if self.prefill.is_some() {
            Some(self.chunks_for(Role::Prefill, &mut budget))
        } else {
            None
        };
        let decode_chunks = self.chunks_for(Role::Decode, &mut budget);
        let step_id = self.step_id;
        self.step_id += 1;
        let decode_group = self.decode.group.clone();
        let decode_fut = async {
            if decode_chunks.iter().all(Vec::is_empty) {
                Ok(Vec::new())
            } else {
                decode_group.step(step_id, decode_chunks, false).await
            }
        };
        let prefill_group = self.prefill.as_ref().map(|p| p.group.clone());
        let prefill_fut = async {
            match (prefill_group, prefill_chunks) {
                (Some(g), Some(c)) if !c.iter().all(Vec::is_empty) => {
                    g.step(step_id, c, false).await
                }
                _ => Ok(Vec::new()),
            }
        };
        let (decode_res, prefill_res) = tokio::join!(decode_fut, prefill_fut);
        match prefill_res {
            Ok(responses) => {
                let finished_prompts = self.deliver(responses);
                for seq in finished_prompts {
                    self.migrate(seq).await;
                }
            }
            Err(e) => self.group_failed(Role::Prefill, e),
        }
        match decode_res {
            Ok(responses) => {
                self.deliver(responses);
            }
            Err(e) => self.group_failed(Role::Decode, e),
        }
    }

    /// Streams sampled tokens and finishes sequences; returns the sequences that completed
    /// their prompt on the prefill group and must move to decode.
    fn deliver(&mut self, responses: Vec<pb::StepResponse>) -> Vec<u64> {
        let mut to_move = Vec::new();
        for res in responses.into_iter().flat_map(|r| r.results) {
            let Some(r) = self.running.get_mut(&res.seq_id) else {
                continue;
            };
            if let Some(t) = r.trace.as_mut() {
                // A traced chunk always comes back with its routing; without it the trace
                // would silently miss tokens, so it is dropped instead.
                let appended = match res.routing.as_ref() {
                    Some(routing) => t.append(routing).map_err(|e| e.to_string()),
                    None => Err("a traced chunk came back without routing".to_string()),
                };
                if let Err(e) = appended {
                    tracing::warn!(request = %r.req.request_id, error = %e, "trace dropped");
                    r.trace = None;
                    if let Some(rec) = &self.cfg.trace {
                        rec.count_drop("invalid_routing");
                    }
                }
            }
            if !res.sampled {
                continue;
            }
            r.generated.push(res.token);
            if r.tx
                .try_send(TokenEvent::Token {
                    id: res.token,
                    logprob: res.logprob,
                    top: res
                        .top_logprobs
                        .iter()
                        .map(|t| (t.token, t.logprob))
                        .collect(),
                })
                .is_err()
            {
                self.release(res.seq_id);
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
                let _ = r.tx.try_send(TokenEvent::Finished {
                    reason,
                    usage: usage(r),
                });
                self.release(res.seq_id);
            } else if r.at.0 == Role::Prefill {
                to_move.push(res.seq_id);
            }
        }
        to_move
    }

    /// Moves a prefilled sequence's KV cache and sampler state to its decode rank.
    async fn migrate(&mut self, seq: u64) {
        let Some(r) = self.running.get(&seq) else {
            return;
        };
        let (Some(p), Some(pr)) = (self.prefill.as_ref(), r.prefill_rank) else {
            return;
        };
        let t0 = Instant::now();
        let exported = p.group.export_kv(pr, seq, true).await;
        let transfer = match exported {
            Ok(t) => t,
            Err(e) => {
                self.fail_seq(
                    seq,
                    &format!("KV transfer from prefill rank {pr} failed: {e}"),
                );
                return;
            }
        };
        let bytes = (transfer.keys.len() + transfer.values.len()) as u64;
        let decode_rank = r.decode_rank;
        if let Err(e) = self.decode.group.import_kv(decode_rank, transfer).await {
            self.fail_seq(
                seq,
                &format!("KV transfer to decode rank {decode_rank} failed: {e}"),
            );
            return;
        }
        metrics::counter!("moeflow:kv_transfer_bytes_total").increment(bytes);
        metrics::histogram!("moeflow:kv_transfer_duration_seconds")
            .record(t0.elapsed().as_secs_f64());
        if let Some(r) = self.running.get_mut(&seq) {
            if let (Some(p), Some(pr)) = (self.prefill.as_mut(), r.prefill_rank.take()) {
                p.give_back(pr, r.prefill_blocks);
            }
            r.at = (Role::Decode, decode_rank);
        }
    }

    fn fail_seq(&mut self, seq: u64, msg: &str) {
        if let Some(r) = self.running.get(&seq) {
            let _ = r.tx.try_send(TokenEvent::Error {
                message: msg.to_string(),
            });
        }
        self.release(seq);
    }

    /// A failed step is terminal for every sequence on that group; the group is marked down.
    /// A failed prefill group leaves decoding running (new prompts prefill on the decode
    /// group); a failed decode group ends everything.
    fn group_failed(&mut self, role: Role, e: GroupError) {
        let name = self.group(role).name.clone();
        let msg = format!("worker group {name} failed: {e}");
        tracing::error!(%msg);
        match (role, self.prefill.as_mut()) {
            (Role::Prefill, Some(p)) => p.broken = Some(e.to_string()),
            _ => self.decode.broken = Some(e.to_string()),
        }
        // Health first: a client that sees its error and then asks must see the group down.
        self.publish_health();
        let affected: Vec<u64> = self
            .running
            .iter()
            .filter(|(_, r)| r.at.0 == role || role == Role::Decode)
            .map(|(s, _)| *s)
            .collect();
        for seq in affected {
            self.fail_seq(seq, &msg);
        }
        if role == Role::Decode {
            self.fail_waiting(&msg);
        }
    }
}
