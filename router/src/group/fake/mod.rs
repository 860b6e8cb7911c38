//! An in-memory [`GroupClient`] for the scheduler's unit tests: real sequence state and KV
//! block accounting per rank, a deterministic toy model ([`toy`]), a two-phase plan switch,
//! and failures on demand (one step, or a rank that stays dead). No sockets, no processes.
//!
//! Steps and KV transfers yield to the runtime once before they act, as a round trip would,
//! so work the scheduler spawned before them (releases) lands first, in a fixed order.

mod rank;
pub(crate) mod toy;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use moeflow_proto::v1 as pb;

use super::{GroupClient, GroupError};
use rank::{FakeRank, Refusal};

/// One chunk a rank ran, as the tests read the step history.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Ran {
    pub step_id: u64,
    pub rank: usize,
    pub seq_id: u64,
    pub start: u32,
    pub tokens: usize,
    pub prompt: bool,
    pub sample: bool,
    /// The token sampled after the chunk, if one was.
    pub token: Option<u32>,
}

#[derive(Debug)]
struct Inner {
    ranks: Vec<FakeRank>,
    /// Ranks that fail every operation from now on.
    dead: Vec<bool>,
    /// The rank that fails the next step.
    fail_next_step: Option<usize>,
    ran: Vec<Ran>,
    /// Sequences moved out and in: (rank, seq id).
    exported: Vec<(usize, u64)>,
    imported: Vec<(usize, u64)>,
    plan: (u64, String),
    staged: Vec<Option<(u64, String)>>,
}

/// A fake group; clones share the same ranks, so a test keeps one to inspect and break it.
#[derive(Debug, Clone)]
pub(crate) struct FakeGroup {
    inner: Arc<Mutex<Inner>>,
    world: usize,
}

fn refused(rank: usize, (code, message): Refusal) -> GroupError {
    GroupError::Rank {
        rank,
        code,
        message,
    }
}

fn gone(rank: usize) -> GroupError {
    refused(rank, (tonic::Code::Unavailable, "the rank is gone".into()))
}

/// A version for a plan text, as a fingerprint would be.
fn version_of(json: &str) -> u64 {
    json.bytes().fold(0x1000_0000_01b3_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

impl FakeGroup {
    /// `world` ranks of `capacity_blocks` KV blocks of `block_size` tokens each.
    pub fn new(world: usize, capacity_blocks: usize, block_size: usize) -> Self {
        let inner = Inner {
            ranks: (0..world)
                .map(|_| FakeRank::new(capacity_blocks, block_size))
                .collect(),
            dead: vec![false; world],
            fail_next_step: None,
            ran: Vec::new(),
            exported: Vec::new(),
            imported: Vec::new(),
            plan: (version_of("{}"), "{}".into()),
            staged: vec![None; world],
        };
        Self {
            inner: Arc::new(Mutex::new(inner)),
            world,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next step fails, blamed on `rank`; later steps run again.
    pub fn fail_next_step(&self, rank: usize) {
        self.lock().fail_next_step = Some(rank);
    }

    /// `rank` dies: every step and every call to it fails from now on.
    pub fn kill(&self, rank: usize) {
        if let Some(d) = self.lock().dead.get_mut(rank) {
            *d = true;
        }
    }

    /// Every chunk run so far, in order.
    pub fn ran(&self) -> Vec<Ran> {
        self.lock().ran.clone()
    }

    /// Sequences exported (rank, seq id), in order.
    pub fn exported(&self) -> Vec<(usize, u64)> {
        self.lock().exported.clone()
    }

    /// Sequences imported (rank, seq id), in order.
    pub fn imported(&self) -> Vec<(usize, u64)> {
        self.lock().imported.clone()
    }

    /// Sequences resident on each rank.
    pub fn resident(&self) -> Vec<usize> {
        self.lock().ranks.iter().map(FakeRank::running).collect()
    }

    /// KV blocks in use on each rank.
    pub fn used_blocks(&self) -> Vec<usize> {
        self.lock()
            .ranks
            .iter()
            .map(FakeRank::used_blocks)
            .collect()
    }

    /// The version of the plan the group runs.
    pub fn plan_version(&self) -> u64 {
        self.lock().plan.0
    }

    fn alive(inner: &Inner, rank: usize) -> Result<(), GroupError> {
        match inner.dead.get(rank) {
            None => Err(GroupError::Shape {
                got: rank + 1,
                want: inner.dead.len(),
            }),
            Some(true) => Err(gone(rank)),
            Some(false) => Ok(()),
        }
    }

    fn first_dead(inner: &Inner) -> Result<(), GroupError> {
        (0..inner.dead.len()).try_for_each(|r| Self::alive(inner, r))
    }

    fn stage_all(&self, json: &str) -> Result<Vec<pb::PreparePlanResponse>, GroupError> {
        let mut inner = self.lock();
        Self::first_dead(&inner)?;
        if serde_json::from_str::<serde_json::Value>(json).is_err() {
            let msg = "plan_json: not a JSON document".to_string();
            return Err(refused(0, (tonic::Code::InvalidArgument, msg)));
        }
        let version = version_of(json);
        for s in &mut inner.staged {
            *s = Some((version, json.to_string()));
        }
        let staged = pb::PreparePlanResponse {
            plan_version: version,
            experts_loaded: 1,
            bytes_loaded: json.len() as u64,
            ..Default::default()
        };
        Ok(vec![staged; self.world])
    }

    fn commit_all(&self, version: u64) -> Result<Vec<pb::CommitPlanResponse>, GroupError> {
        let mut inner = self.lock();
        Self::first_dead(&inner)?;
        let staged: Vec<_> = inner.staged.iter_mut().map(Option::take).collect();
        if let Some(rank) = staged
            .iter()
            .position(|s| s.as_ref().is_none_or(|(v, _)| *v != version))
        {
            let msg = format!("plan {version:016x} is not staged on rank {rank}");
            return Err(refused(rank, (tonic::Code::FailedPrecondition, msg)));
        }
        if let Some(Some(plan)) = staged.into_iter().next() {
            inner.plan = plan;
        }
        let done = pb::CommitPlanResponse {
            plan_version: version,
            ..Default::default()
        };
        Ok(vec![done; self.world])
    }
}

#[tonic::async_trait]
impl GroupClient for FakeGroup {
    fn world_size(&self) -> usize {
        self.world
    }

    async fn step(
        &self,
        step_id: u64,
        per_rank: Vec<Vec<pb::SeqChunk>>,
        _return_logits: bool,
    ) -> Result<Vec<pb::StepResponse>, GroupError> {
        tokio::task::yield_now().await;
        let mut inner = self.lock();
        if per_rank.len() != self.world {
            return Err(GroupError::Shape {
                got: per_rank.len(),
                want: self.world,
            });
        }
        if let Some(rank) = inner.fail_next_step.take() {
            let msg = "injected step failure".to_string();
            return Err(refused(rank, (tonic::Code::Internal, msg)));
        }
        Self::first_dead(&inner)?;
        // All ranks check before any runs: a step happens everywhere or nowhere.
        for (rank, chunks) in per_rank.iter().enumerate() {
            inner.ranks[rank]
                .check(chunks)
                .map_err(|r| refused(rank, r))?;
        }
        let mut out = Vec::with_capacity(self.world);
        for (rank, chunks) in per_rank.into_iter().enumerate() {
            let shapes: Vec<_> = chunks
                .iter()
                .map(|c| (c.seq_id, c.start, c.tokens.len(), c.prompt, c.sample))
                .collect();
            let results = inner.ranks[rank].run(chunks);
            for ((seq_id, start, tokens, prompt, sample), res) in shapes.into_iter().zip(&results) {
                inner.ran.push(Ran {
                    step_id,
                    rank,
                    seq_id,
                    start,
                    tokens,
                    prompt,
                    sample,
                    token: res.sampled.then_some(res.token),
                });
            }
            out.push(pb::StepResponse {
                step_id,
                results,
                forward_seconds: 0.0,
            });
        }
        Ok(out)
    }

    async fn release(&self, rank: usize, seq_ids: Vec<u64>) -> Result<u32, GroupError> {
        let mut inner = self.lock();
        Self::alive(&inner, rank)?;
        Ok(inner.ranks[rank].release(&seq_ids) as u32)
    }

    async fn status(&self) -> Vec<Result<pb::StatusResponse, GroupError>> {
        let inner = self.lock();
        (0..self.world)
            .map(|rank| {
                Self::alive(&inner, rank)?;
                let r = &inner.ranks[rank];
                let cap = r.capacity_blocks();
                Ok(pb::StatusResponse {
                    rank: rank as u32,
                    world_size: self.world as u32,
                    running_sequences: r.running() as u32,
                    kv_usage: r.used_blocks() as f32 / cap.max(1) as f32,
                    kv_free_blocks: cap.saturating_sub(r.used_blocks()) as u32,
                    plan_fingerprint: inner.plan.0,
                    ..Default::default()
                })
            })
            .collect()
    }

    async fn export_kv(
        &self,
        rank: usize,
        seq_id: u64,
        release: bool,
    ) -> Result<pb::KvTransfer, GroupError> {
        tokio::task::yield_now().await;
        let mut inner = self.lock();
        Self::alive(&inner, rank)?;
        let t = inner.ranks[rank]
            .export(seq_id, release)
            .map_err(|r| refused(rank, r))?;
        inner.exported.push((rank, seq_id));
        Ok(t)
    }

    async fn import_kv(&self, rank: usize, transfer: pb::KvTransfer) -> Result<(), GroupError> {
        tokio::task::yield_now().await;
        let mut inner = self.lock();
        Self::alive(&inner, rank)?;
        let seq_id = transfer.seq_id;
        inner.ranks[rank]
            .import(transfer)
            .map_err(|r| refused(rank, r))?;
        inner.imported.push((rank, seq_id));
        Ok(())
    }

    async fn plan(&self) -> Result<pb::GetPlanResponse, GroupError> {
        let inner = self.lock();
        Self::first_dead(&inner)?;
        Ok(pb::GetPlanResponse {
            plan_json: inner.plan.1.clone(),
            plan_version: inner.plan.0,
        })
    }

    async fn prepare_plan(
        &self,
        plan_json: &str,
    ) -> Result<Vec<pb::PreparePlanResponse>, GroupError> {
        self.stage_all(plan_json)
    }

    async fn commit_plan(&self, version: u64) -> Result<Vec<pb::CommitPlanResponse>, GroupError> {
        self.commit_all(version)
    }

    async fn abort_plan(&self, version: u64) {
        for s in &mut self.lock().staged {
            if s.as_ref()
                .is_some_and(|(v, _)| version == 0 || *v == version)
            {
                *s = None;
            }
        }
    }
}
