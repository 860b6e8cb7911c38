//! The router's scheduler: admission with a bounded queue, continuous batching over two worker
//! groups (prefill and decode; without a prefill group the decode group prefills too), the
//! prefill → decode KV hand-over, and the [`Backend`] the front ends talk to.
//!
//! One task owns all scheduling state (`state/`). Every iteration it takes new requests and
//! aborts, drops cancelled sequences (their receivers were dropped), admits waiting requests
//! to ranks with room (`state/admission/`), builds one step per group (decode tokens of every
//! running sequence plus prompt chunks up to the prefill token budget, `state/batch.rs`), runs
//! both groups' steps concurrently and streams the sampled tokens (`state/delivery/`).
//! Requests join and leave between steps. The groups are reached through [`GroupClient`], so
//! the scheduler runs the same against worker processes and against the in-memory group of
//! its unit tests.
//!
//! Failure is terminal and prompt: when a step fails (a rank died, its peers lost it), every
//! sequence on that group gets an error event and the group is marked broken. A broken
//! prefill group leaves decode serving; with a broken decode group, new requests are refused
//! as unavailable.

mod state;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::group::GroupClient;
use crate::trace::TraceRecorder;
use moeflow_api::{
    Backend, ComponentHealth, GenerateRequest, ModelInfo, RankLoad, SubmitError, TokenEvent,
};
use state::{GroupState, Need, SchedState};

pub use state::replan::{ApplyPlanError, GroupPlan, PlanApplied};

/// Budgets and limits of the scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Requests waiting for admission beyond this are refused at once (HTTP 429).
    pub max_waiting: usize,
    /// Prompt tokens per step over the whole group (chunked prefill beyond it).
    pub prefill_token_budget: usize,
    /// Running sequences per rank (each decodes one token per step).
    pub max_running_per_rank: usize,
    /// KV capacity of each rank in blocks, and tokens per block (as the workers run).
    pub kv_blocks_per_rank: usize,
    pub block_size: usize,
    /// Name of the group in health reports and metrics.
    pub group_name: String,
    /// Where the traces of sampled requests go (`--trace-dir`); None records nothing and
    /// asks the workers for nothing.
    pub trace: Option<TraceRecorder>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_waiting: 256,
            prefill_token_budget: 2048,
            max_running_per_rank: 64,
            kv_blocks_per_rank: 8192,
            block_size: 16,
            group_name: "decode".into(),
            trace: None,
        }
    }
}

pub(crate) enum Command {
    Submit(GenerateRequest, mpsc::Sender<TokenEvent>),
    Abort(String, oneshot::Sender<bool>),
    Loads(oneshot::Sender<Vec<RankLoad>>),
    Drain(oneshot::Sender<()>),
    ApplyPlan(String, String, state::replan::ApplyReply),
    PlanPrepared(Box<state::replan::Prepared>),
    GetPlan(String, state::replan::PlanReply),
}

/// Shared flags the front ends read without a round trip to the scheduler task.
pub(crate) struct Shared {
    pub waiting: AtomicUsize,
    /// False once the decode group is broken (nothing can be served): submits are refused.
    pub healthy: AtomicBool,
    pub draining: AtomicBool,
    pub components: Mutex<Vec<ComponentHealth>>,
}

/// The router's [`Backend`] over a decode group and, optionally, a prefill group (without
/// one, the decode group prefills too: aggregated mode).
pub struct Scheduler {
    tx: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
    cfg: SchedulerConfig,
    info: ModelInfo,
}

impl Scheduler {
    /// Starts the scheduling task (aggregated mode) on the current tokio runtime.
    pub fn start<G: GroupClient>(group: G, cfg: SchedulerConfig, info: ModelInfo) -> Arc<Self> {
        Self::start_disaggregated(None, group, cfg, info)
    }

    /// Starts the scheduling task with a prefill group: prompts run there, then each
    /// sequence's KV cache moves to a decode rank of `decode`.
    pub fn start_disaggregated<G: GroupClient>(
        prefill: Option<G>,
        decode: G,
        cfg: SchedulerConfig,
        info: ModelInfo,
    ) -> Arc<Self> {
        let prefill = prefill.map(|g| Arc::new(g) as Arc<dyn GroupClient>);
        let (sched, state, rx) = Self::build(prefill, Arc::new(decode), cfg, info);
        tokio::spawn(state.run(rx));
        sched
    }

    /// The scheduler and its loop's state, not yet running: [`Scheduler::start_disaggregated`]
    /// spawns the loop, the unit tests step it by hand.
    pub(crate) fn build(
        prefill: Option<Arc<dyn GroupClient>>,
        decode: Arc<dyn GroupClient>,
        cfg: SchedulerConfig,
        info: ModelInfo,
    ) -> (Arc<Self>, SchedState, mpsc::UnboundedReceiver<Command>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            waiting: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            draining: AtomicBool::new(false),
            components: Mutex::new(Vec::new()),
        });
        let state = SchedState::new(
            GroupState::new(decode, cfg.group_name.clone()),
            prefill.map(|g| GroupState::new(g, "prefill".into())),
            cfg.clone(),
            shared.clone(),
            tx.clone(),
        );
        let sched = Arc::new(Self {
            tx,
            shared,
            cfg,
            info,
        });
        (sched, state, rx)
    }

    /// Moves the running group `group` (`prefill` or `decode`) to the placement plan
    /// `plan_json`: every rank checks it and loads the experts it gains while serving goes
    /// on, then the group switches between two steps. A plan that does not fit is refused
    /// before anything changes; on any failure the old plan keeps serving.
    pub async fn apply_plan(
        &self,
        group: &str,
        plan_json: String,
    ) -> Result<PlanApplied, ApplyPlanError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::ApplyPlan(group.to_string(), plan_json, tx))
            .map_err(|_| ApplyPlanError::Stopped)?;
        rx.await.map_err(|_| ApplyPlanError::Stopped)?
    }

    /// The placement plan `group` runs now.
    pub async fn plan(&self, group: &str) -> Result<GroupPlan, ApplyPlanError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::GetPlan(group.to_string(), tx))
            .map_err(|_| ApplyPlanError::Stopped)?;
        rx.await.map_err(|_| ApplyPlanError::Stopped)?
    }

    /// Stops admitting and waits until every accepted request has finished.
    pub async fn drain(&self, timeout: Duration) {
        self.shared.draining.store(true, Ordering::SeqCst);
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Drain(tx)).is_ok() {
            let _ = tokio::time::timeout(timeout, rx).await;
        }
    }
}

#[tonic::async_trait]
impl Backend for Scheduler {
    async fn submit(
        &self,
        req: GenerateRequest,
    ) -> Result<mpsc::Receiver<TokenEvent>, SubmitError> {
        if self.shared.draining.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        if !self.shared.healthy.load(Ordering::SeqCst) {
            return Err(SubmitError::Unavailable(format!(
                "worker group {} is down",
                self.cfg.group_name
            )));
        }
        if req.prompt.is_empty() {
            return Err(SubmitError::Invalid("prompt: must not be empty".into()));
        }
        if req.max_tokens == 0 {
            return Err(SubmitError::Invalid(
                "max_tokens: must be at least 1".into(),
            ));
        }
        if req.sampling.top_logprobs > moeflow_api::MAX_TOP_LOGPROBS {
            return Err(SubmitError::Invalid(format!(
                "top_logprobs: at most {}, got {}",
                moeflow_api::MAX_TOP_LOGPROBS,
                req.sampling.top_logprobs
            )));
        }
        let total = req.prompt.len() + req.max_tokens as usize;
        if total > self.info.max_context as usize {
            return Err(SubmitError::Invalid(format!(
                "max_tokens: prompt ({} tokens) + max_tokens ({}) exceeds the context of {} tokens",
                req.prompt.len(),
                req.max_tokens,
                self.info.max_context
            )));
        }
        let need_blocks = Need::of(&req, self.cfg.block_size).decode;
        if need_blocks > self.cfg.kv_blocks_per_rank {
            return Err(SubmitError::Invalid(format!(
                "max_tokens: the request needs {need_blocks} KV blocks, a rank has {}",
                self.cfg.kv_blocks_per_rank
            )));
        }
        // Reserve a queue slot first so concurrent submits cannot overshoot the bound.
        let prev = self.shared.waiting.fetch_add(1, Ordering::SeqCst);
        if prev >= self.cfg.max_waiting {
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::Overloaded(format!(
                "{prev} requests waiting (limit {})",
                self.cfg.max_waiting
            )));
        }
        let cap = (req.max_tokens as usize).saturating_add(2).min(1 << 16);
        let (tx, rx) = mpsc::channel(cap);
        if self.tx.send(Command::Submit(req, tx)).is_err() {
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::Unavailable("the scheduler has stopped".into()));
        }
        Ok(rx)
    }

    async fn abort(&self, request_id: &str) -> bool {
        let (tx, rx) = oneshot::channel();
        if self
            .tx
            .send(Command::Abort(request_id.to_string(), tx))
            .is_err()
        {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    fn health(&self) -> Vec<ComponentHealth> {
        self.shared
            .components
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    async fn loads(&self) -> Vec<RankLoad> {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Loads(tx)).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    fn model_info(&self) -> ModelInfo {
        self.info.clone()
    }
}

/// Per-request bookkeeping kept by id for aborts.
pub(crate) type ById = HashMap<String, u64>;
