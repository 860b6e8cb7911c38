//! The scheduling task's state and loop.
//!
//! Sequences move through phases: waiting → prefill (on the prefill group, or on the decode
//! group in aggregated mode) → decode. With a prefill group, the sequence's KV cache and
//! sampler state move to the decode rank reserved at admission as soon as its prompt is done
//! (the first token is sampled on the prefill rank). Both groups step concurrently.
//!
//! The loop's jobs each have a module: [`admission`] (who starts, on which ranks, the KV
//! budget and the rank-pick rule), [`batch`] (the chunks of a step), [`step`] (running both
//! groups), [`delivery`] (token events, finishing, release, the hand-over, failures) and
//! [`replan`] (live re-placement between two steps).

mod admission;
mod batch;
mod delivery;
mod groups;
pub(crate) mod replan;
mod sequence;
mod step;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};

use super::{ById, Command, SchedulerConfig, Shared};
pub(crate) use admission::Need;
#[cfg(test)]
pub(crate) use batch::worker_sampling;
use groups::GroupHealth;
pub(crate) use groups::GroupState;
use moeflow_api::RankLoad;
use sequence::{Role, Running, Waiting};

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

    /// The loop: blocks for commands only when there is nothing to step.
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        loop {
            if self.is_idle() {
                self.on_idle();
                match rx.recv().await {
                    Some(cmd) => self.handle(cmd),
                    None => return,
                }
            }
            while let Ok(cmd) = rx.try_recv() {
                self.handle(cmd);
            }
            self.iterate().await;
        }
    }

    /// Nothing can run until a command arrives: no sequence is running, and none is waiting
    /// that could start.
    pub(crate) fn is_idle(&self) -> bool {
        self.running.is_empty() && (self.waiting.is_empty() || !self.decode.health.is_up())
    }

    /// Going idle: the gauges must show the empty state, not the last step's, and drains
    /// waiting for this moment are answered.
    pub(crate) fn on_idle(&mut self) {
        self.publish_gauges();
        self.finish_drains();
    }

    /// One iteration between two commands batches: a pending placement switch, cancellations,
    /// admission, then one step.
    pub(crate) async fn iterate(&mut self) {
        // Between two steps: the one place a placement switch may happen.
        self.commit_pending().await;
        self.drop_cancelled();
        match &self.decode.health {
            GroupHealth::Up => {}
            GroupHealth::Broken(why) => {
                let msg = format!("worker group {} is down: {why}", self.decode.name);
                self.fail_waiting(&msg);
                return;
            }
            // Requests wait until the group is back.
            GroupHealth::Healing => return,
        }
        self.admit();
        self.publish_gauges();
        if self.running.is_empty() {
            return;
        }
        self.step().await;
    }

    pub(crate) fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Submit(req, tx) => self.waiting.push_back(Waiting {
                req,
                tx,
                arrived: Instant::now(),
                arrived_ms: unix_ms(),
            }),
            Command::Abort(id, reply) => {
                let found = self.abort(&id);
                let _ = reply.send(found);
            }
            Command::Loads(reply) => {
                let _ = reply.send(self.loads());
            }
            Command::Drain(reply) => self.drains.push(reply),
            Command::ApplyPlan(group, json, reply) => self.start_apply(group, json, reply),
            Command::PlanPrepared(p) => self.prepared(*p),
            Command::GetPlan(group, reply) => self.get_plan(group, reply),
        }
    }

    /// Every rank's load as the scheduler books it.
    fn loads(&self) -> Vec<RankLoad> {
        let mut loads = Vec::new();
        for (role, g) in [
            (Role::Prefill, self.prefill.as_ref()),
            (Role::Decode, Some(&self.decode)),
        ] {
            let Some(g) = g else { continue };
            for b in g.budget.ranks() {
                let queued: u64 = self
                    .running
                    .values()
                    .filter(|s| s.at == (role, b.rank))
                    .map(|s| (s.req.prompt.len() - s.prefilled) as u64)
                    .sum();
                loads.push(RankLoad {
                    group: g.name.clone(),
                    rank: b.rank as u32,
                    running_sequences: b.running as u32,
                    queued_tokens: queued,
                    kv_usage: b.blocks as f32 / self.cfg.kv_blocks_per_rank.max(1) as f32,
                });
            }
        }
        loads
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

    fn prefill_usable(&self) -> bool {
        self.prefill.as_ref().is_some_and(|p| p.health.is_up())
    }

    fn publish_gauges(&self) {
        metrics::gauge!("moeflow:num_requests_running").set(self.running.len() as f64);
        metrics::gauge!("moeflow:num_requests_waiting").set(self.waiting.len() as f64);
        for g in [Some(&self.decode), self.prefill.as_ref()]
            .into_iter()
            .flatten()
        {
            let used = g.budget.used_blocks();
            let cap = self.cfg.kv_blocks_per_rank * g.client.world_size().max(1);
            metrics::gauge!("moeflow:kv_cache_usage_perc", "group" => g.name.clone())
                .set(used as f64 / cap.max(1) as f64);
        }
    }
}
