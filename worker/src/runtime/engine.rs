//! One rank's execution state and its command loop.

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::Instant;

use moeflow_api::SamplingParams;
use moeflow_placement::PlacementPlan;
use tokio::sync::oneshot;

use super::replan::{self, StagedPlan};

use crate::error::{ModelError, Result};
use crate::kv_cache::{KvCache, SeqId, SeqKv};
use crate::model::{ForwardCtx, LogitsMode, SeqInput, Transformer};
use crate::moe::{MoeDispatch, RoutingCapture, RoutingObserver, SeqRouting};
use crate::sampling::{Sample, Sampler};

/// New tokens of one sequence for a step.
#[derive(Debug, Clone)]
pub struct ChunkInput {
    pub seq: SeqId,
    pub tokens: Vec<u32>,
    pub start: usize,
    pub prompt: bool,
    /// Sampling settings; needed with a sequence's first chunk.
    pub sampling: Option<SamplingParams>,
    /// Whether to sample a token after this chunk.
    pub sample: bool,
    /// Whether to capture the experts this chunk's tokens select (trace recording).
    pub trace: bool,
}

#[derive(Debug, Clone, Default)]
pub struct StepInput {
    pub seqs: Vec<ChunkInput>,
    pub return_logits: bool,
}

#[derive(Debug, Clone)]
pub struct SeqOutput {
    pub seq: SeqId,
    pub sample: Option<Sample>,
    pub logits: Option<Vec<f32>>,
    /// What the chunk's tokens selected, when the chunk asked for `trace`.
    pub routing: Option<SeqRouting>,
}

/// A sequence in transit between workers.
#[derive(Debug, Clone)]
pub struct Transfer {
    pub seq: SeqId,
    pub kv: SeqKv,
    pub sampling: SamplingParams,
    pub seed: u64,
    pub draws: u64,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct EngineStatus {
    pub running_sequences: usize,
    pub kv_usage: f32,
    pub kv_free_blocks: usize,
    /// JSON of the dispatch's data-movement counters, when it keeps any.
    pub dispatch_stats: Option<String>,
    /// Fingerprint of the placement plan the engine runs, when it knows it.
    pub plan_fingerprint: Option<u64>,
}

/// What a committed placement switch did on this rank.
#[derive(Debug, Clone, PartialEq)]
pub struct CommitOutcome {
    pub plan_version: u64,
    pub experts_dropped: usize,
    pub seconds: f64,
}

/// Hooks the engine needs from its dispatch beyond [`MoeDispatch`].
pub trait DispatchStats {
    /// JSON of accumulated counters, if the dispatch keeps any.
    fn stats_json(&self) -> Option<String> {
        None
    }

    /// Every rank's `value`, by rank (an all-gather); a single process has only its own.
    fn agree(&mut self, value: u64) -> Result<Vec<u64>> {
        Ok(vec![value])
    }

    /// Routes by `plan` from the next step on (called on every rank at the same step
    /// boundary, after [`DispatchStats::agree`]).
    fn set_plan(&mut self, _plan: &PlacementPlan) -> Result<()> {
        Ok(())
    }
}

impl DispatchStats for crate::moe::LocalDispatch {}

/// A rank's model, KV cache, dispatch and samplers.
pub struct Engine<D> {
    model: Transformer,
    kv: KvCache,
    dispatch: D,
    samplers: HashMap<SeqId, Sampler>,
    /// The placement plan this rank runs and its rank in it (unknown for engines that were
    /// not given one: they cannot switch).
    plan: Option<(PlacementPlan, usize)>,
    staged: Option<StagedPlan>,
}

impl<D: MoeDispatch + DispatchStats> Engine<D> {
    pub fn new(model: Transformer, kv: KvCache, dispatch: D) -> Self {
        Self {
            model,
            kv,
            dispatch,
            samplers: HashMap::new(),
            plan: None,
            staged: None,
        }
    }

    /// Records the plan the model was loaded with, which makes live re-placement possible.
    pub fn with_plan(mut self, plan: PlacementPlan, rank: usize) -> Self {
        self.plan = Some((plan, rank));
        self
    }

    /// The plan this rank runs.
    pub fn plan(&self) -> Option<&PlacementPlan> {
        self.plan.as_ref().map(|(p, _)| p)
    }

    /// Keeps a prepared plan until [`Engine::commit_plan`] or [`Engine::abort_plan`]; a newer
    /// one replaces an older one.
    pub fn stage_plan(&mut self, staged: StagedPlan) {
        self.staged = Some(staged);
    }

    /// Drops the staged plan if it is `version` (or any, for `None`); true if one was dropped.
    pub fn abort_plan(&mut self, version: Option<u64>) -> bool {
        let hit = self
            .staged
            .as_ref()
            .is_some_and(|s| version.is_none_or(|v| v == s.version));
        if hit {
            self.staged = None;
        }
        hit
    }

    /// Switches to the staged plan `version`, on every rank or on none: the ranks first agree
    /// over the communicator (each contributes the version it staged, 0 for none); only if all
    /// staged `version` does each build its new expert set and swap it in. Must run between
    /// two steps on all ranks.
    pub fn commit_plan(&mut self, version: u64) -> Result<CommitOutcome> {
        let t0 = Instant::now();
        let staged = self.staged.take();
        let Some((current, rank)) = self.plan.clone() else {
            // Still take part in the agreement, so that the other ranks fail cleanly.
            self.dispatch.agree(0)?;
            return Err(ModelError::Input(
                "this worker has no placement plan to switch from".into(),
            ));
        };
        let hidden = self.model.shape().hidden_size;
        let ready = staged.filter(|s| s.version == version).map(|s| {
            replan::switched_experts(self.model.experts(), &s, rank, hidden).map(|e| (s, e))
        });
        let (mine, built) = match ready {
            Some(Ok(b)) => (version, Some(b)),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cannot build the staged expert set");
                (0, None)
            }
            None => (0, None),
        };
        let all = self.dispatch.agree(mine)?;
        let missing: Vec<usize> = all
            .iter()
            .enumerate()
            .filter(|(_, v)| **v != version)
            .map(|(r, _)| r)
            .collect();
        let Some((staged, experts)) = built.filter(|_| missing.is_empty()) else {
            return Err(ModelError::Input(format!(
                "plan {version:016x} is not staged on rank(s) {missing:?}; the group keeps plan {:016x}",
                current.fingerprint()
            )));
        };
        self.dispatch.set_plan(&staged.plan)?;
        replan::free_in_background(self.model.replace_experts(experts));
        let dropped = replan::drops(&current, &staged.plan, rank).len();
        self.plan = Some((staged.plan, rank));
        Ok(CommitOutcome {
            plan_version: version,
            experts_dropped: dropped,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }

    pub fn model(&self) -> &Transformer {
        &self.model
    }

    /// Runs one forward pass over this rank's chunks (possibly none) and samples where asked.
    pub fn step(&mut self, input: StepInput) -> Result<Vec<SeqOutput>> {
        for c in &input.seqs {
            if !self.samplers.contains_key(&c.seq) && c.start != 0 {
                return Err(ModelError::Input(format!(
                    "sequence {}: unknown sequence continued at position {}",
                    c.seq, c.start
                )));
            }
        }
        let batch: Vec<SeqInput> = input
            .seqs
            .iter()
            .map(|c| SeqInput {
                seq: c.seq,
                tokens: c.tokens.clone(),
                start: c.start,
                prompt: c.prompt,
            })
            .collect();
        // Only steps with traced chunks install an observer: untraced serving pays nothing.
        let mut capture = RoutingCapture::new(input.seqs.iter().filter(|c| c.trace).map(|c| c.seq));
        let logits = {
            let mut ctx = ForwardCtx {
                dispatch: &mut self.dispatch,
                observer: (!capture.is_empty()).then_some(&mut capture as &mut dyn RoutingObserver),
            };
            self.model
                .forward(&batch, &mut self.kv, &mut ctx, LogitsMode::LastPerSeq)?
        };
        let rows = if input.seqs.is_empty() {
            Vec::new()
        } else {
            logits.to_vec2::<f32>()?
        };
        let mut out = Vec::with_capacity(rows.len());
        for (c, row) in input.seqs.iter().zip(rows) {
            let sampler = self.samplers.entry(c.seq).or_insert_with(|| {
                Sampler::new(c.sampling.clone().unwrap_or_else(SamplingParams::greedy))
            });
            let sample = c.sample.then(|| sampler.sample(&row));
            out.push(SeqOutput {
                seq: c.seq,
                sample,
                logits: input.return_logits.then_some(row),
                routing: capture.take(c.seq),
            });
        }
        Ok(out)
    }

    /// A sequence's KV cache and sampler state, for moving it to another worker.
    pub fn export(&mut self, seq: SeqId, release: bool) -> Result<Transfer> {
        let kv = self.kv.export(seq)?;
        let sampler = self
            .samplers
            .get(&seq)
            .ok_or_else(|| ModelError::Input(format!("sequence {seq} has no sampler")))?;
        let (seed, draws) = sampler.state();
        let t = Transfer {
            seq,
            kv,
            sampling: sampler.params().clone(),
            seed,
            draws,
        };
        if release {
            self.release(&[seq]);
        }
        Ok(t)
    }

    /// Installs a sequence moved from another worker.
    pub fn import(&mut self, t: Transfer) -> Result<()> {
        self.kv.import(t.seq, &t.kv)?;
        self.samplers
            .insert(t.seq, Sampler::resume(t.sampling, t.seed, t.draws));
        Ok(())
    }

    /// Frees the KV blocks and samplers of `seqs`; returns the blocks freed.
    pub fn release(&mut self, seqs: &[SeqId]) -> usize {
        seqs.iter()
            .map(|s| {
                self.samplers.remove(s);
                self.kv.free(*s)
            })
            .sum()
    }

    pub fn status(&self) -> EngineStatus {
        EngineStatus {
            running_sequences: self.kv.num_seqs(),
            kv_usage: self.kv.usage(),
            kv_free_blocks: self.kv.free_blocks(),
            dispatch_stats: self.dispatch.stats_json(),
            plan_fingerprint: self.plan().map(PlacementPlan::fingerprint),
        }
    }
}

enum Command {
    Step(StepInput, oneshot::Sender<Result<(Vec<SeqOutput>, f64)>>),
    Release(Vec<SeqId>, oneshot::Sender<usize>),
    Status(oneshot::Sender<EngineStatus>),
    Export(SeqId, bool, oneshot::Sender<Result<Transfer>>),
    Import(Box<Transfer>, oneshot::Sender<Result<()>>),
    Plan(oneshot::Sender<Option<PlacementPlan>>),
    Stage(Box<StagedPlan>, oneshot::Sender<()>),
    Commit(u64, oneshot::Sender<Result<CommitOutcome>>),
    Abort(Option<u64>, oneshot::Sender<bool>),
    Shutdown,
}

/// A cloneable handle to an engine running on its own thread.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
}

impl EngineHandle {
    /// Moves `engine` to a new OS thread that serves commands until shutdown.
    pub fn spawn<D: MoeDispatch + DispatchStats + Send + 'static>(mut engine: Engine<D>) -> Self {
        let (tx, rx) = mpsc::channel::<Command>();
        std::thread::Builder::new()
            .name("moeflow-engine".into())
            .spawn(move || {
                while let Ok(cmd) = rx.recv() {
                    match cmd {
                        Command::Step(input, reply) => {
                            let t0 = Instant::now();
                            let tokens: usize = input.seqs.iter().map(|c| c.tokens.len()).sum();
                            let r = engine.step(input).map(|o| (o, t0.elapsed().as_secs_f64()));
                            match &r {
                                // One event per step on its own target, off by default: the
                                // timeline of step times that a latency investigation (such
                                // as bench/replace_hiccup.sh around a plan switch) reads.
                                Ok((_, secs)) => tracing::debug!(
                                    target: "moeflow::step",
                                    ms = secs * 1e3,
                                    tokens,
                                    "step"
                                ),
                                Err(e) => tracing::warn!(error = %e, "step failed"),
                            }
                            let _ = reply.send(r);
                        }
                        Command::Release(seqs, reply) => {
                            let _ = reply.send(engine.release(&seqs));
                        }
                        Command::Status(reply) => {
                            let _ = reply.send(engine.status());
                        }
                        Command::Export(seq, release, reply) => {
                            let _ = reply.send(engine.export(seq, release));
                        }
                        Command::Import(t, reply) => {
                            let _ = reply.send(engine.import(*t));
                        }
                        Command::Plan(reply) => {
                            let _ = reply.send(engine.plan().cloned());
                        }
                        Command::Stage(s, reply) => {
                            engine.stage_plan(*s);
                            let _ = reply.send(());
                        }
                        Command::Commit(version, reply) => {
                            let r = engine.commit_plan(version);
                            match &r {
                                Ok(o) => tracing::info!(
                                    version = format!("{version:016x}"),
                                    dropped = o.experts_dropped,
                                    "switched placement plan"
                                ),
                                Err(e) => tracing::warn!(error = %e, "placement switch refused"),
                            }
                            let _ = reply.send(r);
                        }
                        Command::Abort(version, reply) => {
                            let _ = reply.send(engine.abort_plan(version));
                        }
                        Command::Shutdown => break,
                    }
                }
                tracing::info!("engine stopped");
            })
            .map(|_| ())
            .unwrap_or_else(|e| tracing::error!(error = %e, "cannot start the engine thread"));
        Self { tx }
    }

    fn gone() -> ModelError {
        ModelError::Dispatch("the engine thread has stopped".into())
    }

    pub async fn step(&self, input: StepInput) -> Result<(Vec<SeqOutput>, f64)> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Step(input, tx))
            .map_err(|_| Self::gone())?;
        rx.await.map_err(|_| Self::gone())?
    }

    pub async fn release(&self, seqs: Vec<SeqId>) -> Result<usize> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Release(seqs, tx))
            .map_err(|_| Self::gone())?;
        rx.await.map_err(|_| Self::gone())
    }

    pub async fn status(&self) -> Result<EngineStatus> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Status(tx))
            .map_err(|_| Self::gone())?;
        rx.await.map_err(|_| Self::gone())
    }

    pub async fn export(&self, seq: SeqId, release: bool) -> Result<Transfer> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Export(seq, release, tx))
            .map_err(|_| Self::gone())?;
        rx.await.map_err(|_| Self::gone())?
    }

    pub async fn import(&self, t: Transfer) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Import(Box::new(t), tx))
            .map_err(|_| Self::gone())?;
        rx.await.map_err(|_| Self::gone())?
    }

    /// The plan the engine runs (`None` if it was started without one).
    pub async fn plan(&self) -> Result<Option<PlacementPlan>> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::Plan(tx)).map_err(|_| Self::gone())?;
        rx.await.map_err(|_| Self::gone())
    }

    pub async fn stage_plan(&self, staged: StagedPlan) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Stage(Box::new(staged), tx))
            .map_err(|_| Self::gone())?;
        rx.await.map_err(|_| Self::gone())
    }

    pub async fn commit_plan(&self, version: u64) -> Result<CommitOutcome> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Commit(version, tx))
            .map_err(|_| Self::gone())?;
        rx.await.map_err(|_| Self::gone())?
    }

    pub async fn abort_plan(&self, version: Option<u64>) -> Result<bool> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Abort(version, tx))
            .map_err(|_| Self::gone())?;
        rx.await.map_err(|_| Self::gone())
    }

    pub fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown);
    }
}
