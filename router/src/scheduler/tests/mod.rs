//! The scheduler against in-memory groups ([`FakeGroup`]), stepped by hand.
//!
//! A [`Harness`] holds the scheduler's loop state instead of spawning it, and runs one loop
//! iteration per [`Harness::tick`]: what a test sees between two ticks is exactly the state
//! between two steps. Everything runs on the test's single-threaded runtime, without sockets,
//! processes or clocks, so the outcome of every test is fixed.

mod budgets;
mod cancellation;
mod chunked_prefill;
mod failure;
mod handover;
mod invariants;
mod replan;
mod spawned;

use std::future::Future;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::state::{worker_sampling, SchedState};
use super::{Command, Scheduler, SchedulerConfig};
use crate::group::fake::{toy, FakeGroup};
use crate::group::GroupClient;
use moeflow_api::{Backend, GenerateRequest, ModelInfo, SamplingParams, TokenEvent};

/// Ticks after which a test that has not settled is stuck.
pub(crate) const MAX_TICKS: usize = 10_000;

pub(crate) fn info() -> ModelInfo {
    ModelInfo {
        id: "toy".into(),
        architecture: "toy".into(),
        max_context: 4096,
        vocab_size: toy::VOCAB,
        num_experts: 8,
        experts_per_token: 2,
    }
}

/// Small budgets, so that tests reach them with a few short requests.
pub(crate) fn config() -> SchedulerConfig {
    SchedulerConfig {
        max_waiting: 64,
        prefill_token_budget: 64,
        max_running_per_rank: 8,
        kv_blocks_per_rank: 32,
        block_size: 4,
        ..SchedulerConfig::default()
    }
}

pub(crate) fn greedy(id: &str, prompt: Vec<u32>, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        request_id: id.into(),
        prompt,
        sampling: SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        },
        max_tokens,
        stop_token_ids: Vec::new(),
        workload: None,
    }
}

pub(crate) fn seeded(id: &str, prompt: Vec<u32>, max_tokens: u32, seed: u64) -> GenerateRequest {
    let mut r = greedy(id, prompt, max_tokens);
    r.sampling = SamplingParams {
        temperature: 0.9,
        seed: Some(seed),
        ..SamplingParams::default()
    };
    r
}

/// `n` prompt tokens, different for every `salt`.
pub(crate) fn prompt(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|j| (j * 13 + salt * 7 + 1) % 500)
        .collect()
}

/// What the request generates on one worker, with no scheduler in between.
pub(crate) fn expected(req: &GenerateRequest) -> Vec<u32> {
    toy::generate(
        &req.prompt,
        worker_sampling(&req.sampling),
        req.max_tokens as usize,
        &req.stop_token_ids,
    )
}

/// A stream that has ended: its tokens and its one terminal event.
#[derive(Debug)]
pub(crate) struct Ended {
    pub tokens: Vec<u32>,
    pub events: Vec<TokenEvent>,
    pub end: TokenEvent,
}

/// Everything a stream carried. Panics unless the stream is closed and ended with exactly
/// one `Finished` or `Error`, after every token.
pub(crate) fn ended(rx: &mut mpsc::Receiver<TokenEvent>) -> Ended {
    let mut events = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(e) => events.push(e),
            Err(mpsc::error::TryRecvError::Disconnected) => break,
            Err(mpsc::error::TryRecvError::Empty) => panic!("stream still open after {events:?}"),
        }
    }
    ended_with(events)
}

/// Checks that `events` are tokens followed by exactly one terminal event.
pub(crate) fn ended_with(events: Vec<TokenEvent>) -> Ended {
    let terminal = |e: &TokenEvent| !matches!(e, TokenEvent::Token { .. });
    assert_eq!(
        events.iter().filter(|e| terminal(e)).count(),
        1,
        "exactly one terminal event: {events:?}"
    );
    let end = match events.last() {
        Some(e) if terminal(e) => e.clone(),
        _ => panic!("the terminal event must come last: {events:?}"),
    };
    let tokens = token_ids(&events);
    Ended {
        tokens,
        events,
        end,
    }
}

/// The ids of the token events among `events`.
pub(crate) fn token_ids(events: &[TokenEvent]) -> Vec<u32> {
    events
        .iter()
        .filter_map(|e| match e {
            TokenEvent::Token { id, .. } => Some(*id),
            _ => None,
        })
        .collect()
}

/// Tokens received so far on a stream that is still open.
pub(crate) fn received(rx: &mut mpsc::Receiver<TokenEvent>) -> Vec<TokenEvent> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

/// A scheduler whose loop the test runs.
pub(crate) struct Harness {
    pub sched: Arc<Scheduler>,
    state: SchedState,
    rx: mpsc::UnboundedReceiver<Command>,
    pub decode: FakeGroup,
    pub prefill: Option<FakeGroup>,
}

impl Harness {
    /// A decode group of `decode` ranks and, if `prefill` is given, a prefill group of that
    /// many ranks; every rank holds `cfg.kv_blocks_per_rank` blocks.
    pub fn new(cfg: SchedulerConfig, decode: usize, prefill: Option<usize>) -> Self {
        let fake = |n| FakeGroup::new(n, cfg.kv_blocks_per_rank, cfg.block_size);
        let decode = fake(decode);
        let prefill = prefill.map(fake);
        let (sched, state, rx) = Scheduler::build(
            prefill.clone().map(|g| Arc::new(g) as Arc<dyn GroupClient>),
            Arc::new(decode.clone()),
            cfg,
            info(),
        );
        Self {
            sched,
            state,
            rx,
            decode,
            prefill,
        }
    }

    /// Submits a request the scheduler must accept.
    pub async fn submit(&self, req: GenerateRequest) -> mpsc::Receiver<TokenEvent> {
        let id = req.request_id.clone();
        match self.sched.submit(req).await {
            Ok(rx) => rx,
            Err(e) => panic!("request {id} refused: {e}"),
        }
    }

    /// One iteration of the scheduler's loop: commands, cancellations, admission, one step.
    pub async fn tick(&mut self) {
        if self.state.is_idle() {
            self.state.on_idle();
        }
        while let Ok(cmd) = self.rx.try_recv() {
            self.state.handle(cmd);
        }
        self.state.iterate().await;
        settle().await;
    }

    /// One tick, unless nothing is left to run: then true (and the loop's idle work done).
    pub async fn advance(&mut self) -> bool {
        if self.state.is_idle() && self.rx.is_empty() {
            self.state.on_idle();
            return true;
        }
        self.tick().await;
        false
    }

    /// Ticks until nothing is left to run; returns how many ticks that took.
    pub async fn run_until_idle(&mut self) -> usize {
        for n in 0..MAX_TICKS {
            if self.advance().await {
                return n;
            }
        }
        panic!("the scheduler did not go idle within {MAX_TICKS} ticks");
    }

    /// Runs a call that needs an answer from the loop (abort, loads, apply_plan) while
    /// ticking the loop.
    pub async fn call<T: Send + 'static>(
        &mut self,
        call: impl Future<Output = T> + Send + 'static,
    ) -> T {
        let task = tokio::spawn(call);
        for _ in 0..MAX_TICKS {
            settle().await;
            if task.is_finished() {
                break;
            }
            self.tick().await;
        }
        match task.await {
            Ok(out) => out,
            Err(e) => panic!("the call did not complete: {e}"),
        }
    }

    /// The loads the scheduler reports (through the `Backend` call).
    pub async fn loads(&mut self) -> Vec<moeflow_api::RankLoad> {
        let s = self.sched.clone();
        self.call(async move { s.loads().await }).await
    }

    /// Each group's name and whether `/health` reports it up, decode first.
    pub fn up(&self) -> Vec<(String, bool)> {
        self.sched
            .health()
            .into_iter()
            .map(|c| (c.name, c.healthy))
            .collect()
    }

    /// Requests accepted and not yet admitted.
    pub fn waiting(&self) -> usize {
        self.sched
            .shared
            .waiting
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Lets tasks the scheduler spawned (releases, plan preparation) run to completion.
pub(crate) async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}
