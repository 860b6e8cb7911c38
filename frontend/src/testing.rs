//! An in-process [`Backend`] for tests and the router-overhead benchmark: it emits a scripted
//! token sequence with a configurable delay, can fail mid-stream, stall, or refuse requests,
//! and records what it was sent, what was aborted and which receivers were dropped.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use moeflow_api::{
    Backend, ComponentHealth, FinishReason, GenerateRequest, ModelInfo, RankLoad, SubmitError,
    TokenEvent, Usage,
};
use moeflow_tokenizer::train::{train_byte_level_bpe, BUILTIN_CORPUS};
use moeflow_tokenizer::Tokenizer;
use tokio::sync::{mpsc, Notify};

/// How the fake behaves.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    pub model: ModelInfo,
    /// Token ids emitted in order, cycled; empty: the prompt's ids, cycled.
    pub script: Vec<u32>,
    /// Pause before each token (zero: as fast as the channel takes them).
    pub delay: Duration,
    /// After this many tokens, end with a terminal `TokenEvent::Error`.
    pub fail_after: Option<usize>,
    /// After this many tokens, wait until the receiver is dropped or the request aborted.
    pub stall_after: Option<usize>,
    /// The receiver's capacity.
    pub channel_capacity: usize,
    /// Record each token's send time (see [`FakeBackend::emit_times`]).
    pub record_emit_times: bool,
}

impl FakeConfig {
    /// A fake model with this vocabulary size and a 512-token context.
    pub fn new(vocab_size: u32) -> Self {
        Self {
            model: ModelInfo {
                id: "fake-moe".into(),
                architecture: "qwen3_moe".into(),
                max_context: 512,
                vocab_size,
                num_experts: 8,
                experts_per_token: 2,
            },
            script: Vec::new(),
            delay: Duration::ZERO,
            fail_after: None,
            stall_after: None,
            channel_capacity: 64,
            record_emit_times: false,
        }
    }
}

/// The alternatives the fake reports when asked for `n`: the emitted token first (with its
/// [`fake_logprob`]), then the ids after it (modulo `vocab`), each one nat less likely.
pub fn fake_top(id: u32, i: usize, n: u32, vocab: u32) -> Vec<(u32, f32)> {
    let vocab = vocab.max(1);
    (0..n)
        .map(|k| ((id + k) % vocab, fake_logprob(i) - k as f32))
        .collect()
}

/// Logprob the fake reports for the i-th token.
pub fn fake_logprob(i: usize) -> f32 {
    -0.25 * (i % 4) as f32 - 0.125
}

#[derive(Default)]
struct Records {
    requests: Vec<GenerateRequest>,
    aborted: Vec<String>,
    dropped: Vec<String>,
    completed: Vec<String>,
    emit_times: HashMap<String, Vec<Instant>>,
    cancels: HashMap<String, Arc<Cancel>>,
}

#[derive(Default)]
struct Cancel {
    flag: AtomicBool,
    notify: Notify,
}

/// The fake backend.
pub struct FakeBackend {
    config: FakeConfig,
    reject: Mutex<Option<SubmitError>>,
    health: Mutex<Vec<ComponentHealth>>,
    records: Mutex<Records>,
    changed: Notify,
    /// Itself, for the producer tasks `submit` spawns.
    me: Weak<FakeBackend>,
}

impl FakeBackend {
    pub fn new(config: FakeConfig) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            config,
            reject: Mutex::new(None),
            health: Mutex::new(vec![ComponentHealth {
                name: "fake".into(),
                healthy: true,
                detail: "in process".into(),
            }]),
            records: Mutex::new(Records::default()),
            changed: Notify::new(),
        })
    }

    fn records(&self) -> MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut Records)) {
        f(&mut self.records());
        self.changed.notify_waiters();
    }

    /// Makes every later `submit` fail with this error (`None`: accept again).
    pub fn set_reject(&self, error: Option<SubmitError>) {
        *self.reject.lock().unwrap_or_else(|p| p.into_inner()) = error;
    }

    /// What `health` reports.
    pub fn set_health(&self, components: Vec<ComponentHealth>) {
        *self.health.lock().unwrap_or_else(|p| p.into_inner()) = components;
    }

    /// Every accepted request, in order.
    pub fn requests(&self) -> Vec<GenerateRequest> {
        self.records().requests.clone()
    }

    /// Ids of requests cancelled through `abort`.
    pub fn aborted(&self) -> Vec<String> {
        self.records().aborted.clone()
    }

    /// Ids of requests whose receiver was dropped before their stream ended.
    pub fn dropped(&self) -> Vec<String> {
        self.records().dropped.clone()
    }

    /// Ids of requests whose stream ended with its terminal event sent.
    pub fn completed(&self) -> Vec<String> {
        self.records().completed.clone()
    }

    /// Send times of each request's tokens (with `record_emit_times`), removing them.
    pub fn take_emit_times(&self) -> HashMap<String, Vec<Instant>> {
        std::mem::take(&mut self.records().emit_times)
    }

    /// Waits until `done` holds for the records' lists (requests, aborted, dropped,
    /// completed). Tests bound this with their own timeout.
    pub async fn wait_until(&self, done: impl Fn(&FakeView<'_>) -> bool) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let r = self.records();
                let view = FakeView {
                    requests: &r.requests,
                    aborted: &r.aborted,
                    dropped: &r.dropped,
                    completed: &r.completed,
                };
                if done(&view) {
                    return;
                }
            }
            notified.await;
        }
    }

    fn token_at(&self, req: &GenerateRequest, i: usize) -> u32 {
        let script = if self.config.script.is_empty() {
            &req.prompt
        } else {
            &self.config.script
        };
        script.get(i % script.len().max(1)).copied().unwrap_or(0)
    }

    async fn produce(
        self: Arc<Self>,
        req: GenerateRequest,
        tx: mpsc::Sender<TokenEvent>,
        cancel: Arc<Cancel>,
    ) {
        let id = req.request_id.clone();
        let mut times = Vec::new();
        let end = self.run(&req, &tx, &cancel, &mut times).await;
        let record = self.config.record_emit_times;
        self.update(|r| {
            r.cancels.remove(&id);
            if record {
                r.emit_times.insert(id.clone(), times);
            }
            match end {
                End::Sent => r.completed.push(id),
                End::Dropped => r.dropped.push(id),
            }
        });
    }

    async fn run(
        &self,
        req: &GenerateRequest,
        tx: &mpsc::Sender<TokenEvent>,
        cancel: &Cancel,
        times: &mut Vec<Instant>,
    ) -> End {
        let usage = |n: usize| Usage {
            prompt_tokens: u32::try_from(req.prompt.len()).unwrap_or(u32::MAX),
            completion_tokens: u32::try_from(n).unwrap_or(u32::MAX),
        };
        let finish = |reason, n| TokenEvent::Finished {
            reason,
            usage: usage(n),
        };
        for i in 0..req.max_tokens as usize {
            if self.config.fail_after == Some(i) {
                let error = TokenEvent::Error {
                    message: "fake worker failure".into(),
                };
                return send(tx, error).await;
            }
            if self.config.stall_after == Some(i) {
                tokio::select! {
                    _ = tx.closed() => return End::Dropped,
                    _ = cancel.notify.notified() => return send(tx, finish(FinishReason::Abort, i)).await,
                }
            }
            if !self.config.delay.is_zero() {
                tokio::select! {
                    _ = tx.closed() => return End::Dropped,
                    _ = cancel.notify.notified() => return send(tx, finish(FinishReason::Abort, i)).await,
                    _ = tokio::time::sleep(self.config.delay) => {}
                }
            } else if cancel.flag.load(Ordering::Relaxed) {
                return send(tx, finish(FinishReason::Abort, i)).await;
            }
            let id = self.token_at(req, i);
            if self.config.record_emit_times {
                times.push(Instant::now());
            }
            let token = TokenEvent::Token {
                id,
                logprob: fake_logprob(i),
                top: fake_top(
                    id,
                    i,
                    req.sampling.top_logprobs,
                    self.config.model.vocab_size,
                ),
            };
            if tx.send(token).await.is_err() {
                return End::Dropped;
            }
            if req.stop_token_ids.contains(&id) {
                return send(tx, finish(FinishReason::Stop, i + 1)).await;
            }
        }
        send(tx, finish(FinishReason::Length, req.max_tokens as usize)).await
    }
}

/// What the tests can see of the records.
pub struct FakeView<'a> {
    pub requests: &'a [GenerateRequest],
    pub aborted: &'a [String],
    pub dropped: &'a [String],
    pub completed: &'a [String],
}

enum End {
    Sent,
    Dropped,
}

async fn send(tx: &mpsc::Sender<TokenEvent>, event: TokenEvent) -> End {
    match tx.send(event).await {
        Ok(()) => End::Sent,
        Err(_) => End::Dropped,
    }
}

#[tonic::async_trait]
impl Backend for FakeBackend {
    async fn submit(
        &self,
        req: GenerateRequest,
    ) -> Result<mpsc::Receiver<TokenEvent>, SubmitError> {
        if let Some(e) = self
            .reject
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Err(e);
        }
        let (tx, rx) = mpsc::channel(self.config.channel_capacity.max(1));
        let cancel = Arc::new(Cancel::default());
        let Some(me) = self.me.upgrade() else {
            return Err(SubmitError::ShuttingDown);
        };
        self.update(|r| {
            r.requests.push(req.clone());
            r.cancels
                .insert(req.request_id.clone(), Arc::clone(&cancel));
        });
        tokio::spawn(me.produce(req, tx, cancel));
        Ok(rx)
    }

    async fn abort(&self, request_id: &str) -> bool {
        let cancel = self.records().cancels.get(request_id).cloned();
        match cancel {
            Some(c) => {
                c.flag.store(true, Ordering::Relaxed);
                c.notify.notify_one();
                self.update(|r| r.aborted.push(request_id.to_string()));
                true
            }
            None => false,
        }
    }

    fn health(&self) -> Vec<ComponentHealth> {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn loads(&self) -> Vec<RankLoad> {
        let running = self.records().cancels.len();
        vec![RankLoad {
            group: "fake".into(),
            rank: 0,
            running_sequences: u32::try_from(running).unwrap_or(u32::MAX),
            queued_tokens: 0,
            kv_usage: 0.0,
        }]
    }

    fn model_info(&self) -> ModelInfo {
        self.config.model.clone()
    }
}

/// Tokenizer size of the tiny generated checkpoints (`moeflow init-model --preset tiny`).
const TINY_VOCAB: usize = 1024;
/// Context length of the tiny Qwen3-MoE checkpoint, its tokenizer's `model_max_length`.
const TINY_CONTEXT: usize = 2048;

/// Writes the tokenizer files of a tiny generated Qwen3-MoE checkpoint (byte-level BPE from
/// the same trainer and corpus, ChatML template) into `dir` and loads them: the tokenizer the
/// served tiny model has, without the weights, so the front ends' tests need no model crate.
pub fn tiny_tokenizer(dir: &Path) -> Result<Arc<Tokenizer>, Box<dyn std::error::Error>> {
    std::fs::create_dir_all(dir)?;
    train_byte_level_bpe(BUILTIN_CORPUS, TINY_VOCAB)?.write_files(dir, TINY_CONTEXT)?;
    Ok(Arc::new(Tokenizer::from_dir(dir)?))
}
