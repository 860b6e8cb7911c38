//! Live re-placement inside the scheduling loop: prepare in the background, commit between
//! two steps.
//!
//! `ApplyPlan` starts a task that asks every rank of the group to prepare the plan (check it,
//! load the experts it gains) while the loop keeps stepping. When every rank has prepared,
//! the task hands the result back to the loop, which sends `CommitPlan` to all ranks before
//! its next step, so the switch falls between two lockstep steps. If any rank refuses or fails
//! to prepare, every rank drops what it staged and the old plan keeps serving.

use std::time::Instant;

use moeflow_proto::v1 as pb;
use tokio::sync::oneshot;

use super::sequence::Role;
use super::SchedState;
use crate::group::GroupError;
use crate::scheduler::Command;

/// What a completed switch did, summed over the group's ranks.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanApplied {
    pub group: String,
    pub old_version: u64,
    pub new_version: u64,
    pub experts_loaded: u32,
    pub bytes_loaded: u64,
    pub experts_dropped: u32,
    /// From the request until every rank staged its experts (serving went on).
    pub prepare_seconds: f64,
    /// The switch between two steps.
    pub commit_seconds: f64,
}

/// The plan a group runs.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupPlan {
    pub group: String,
    pub plan_json: String,
    pub version: u64,
}

/// Why a plan was not applied. In every case the group still runs its old plan, except
/// [`ApplyPlanError::GroupFailed`], where a rank failed during the switch and the group is
/// down.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApplyPlanError {
    #[error("group: {0}")]
    NoGroup(String),
    #[error("group {0}: a placement switch is already in progress")]
    Busy(String),
    #[error("group {group}: plan refused: {msg}")]
    Refused { group: String, msg: String },
    #[error("group {group}: the switch failed, the old plan stays: {msg}")]
    NotSwitched { group: String, msg: String },
    #[error("group {group} is down: {msg}")]
    GroupFailed { group: String, msg: String },
    #[error("the scheduler has stopped")]
    Stopped,
}

pub(crate) type ApplyReply = oneshot::Sender<Result<PlanApplied, ApplyPlanError>>;
pub(crate) type PlanReply = oneshot::Sender<Result<GroupPlan, ApplyPlanError>>;

/// A prepare that finished (successfully or not), back in the loop.
pub(crate) struct Prepared {
    role: Role,
    result: Result<(u64, Vec<pb::PreparePlanResponse>), GroupError>,
    started: Instant,
    reply: ApplyReply,
}

/// A prepared plan waiting for the next step boundary.
pub(crate) struct PendingCommit {
    role: Role,
    old_version: u64,
    prepared: Vec<pb::PreparePlanResponse>,
    started: Instant,
    prepare_seconds: f64,
    reply: ApplyReply,
}

impl SchedState {
    fn role_of(&self, group: &str) -> Result<Role, ApplyPlanError> {
        match group {
            "decode" => Ok(Role::Decode),
            "prefill" if self.prefill.is_some() => Ok(Role::Prefill),
            "prefill" => Err(ApplyPlanError::NoGroup(
                "this deployment has no prefill group (aggregated mode)".into(),
            )),
            other => Err(ApplyPlanError::NoGroup(format!(
                "unknown group `{other}` (prefill, decode)"
            ))),
        }
    }

    /// Starts preparing `plan_json` on every rank of `group` in the background.
    pub(super) fn start_apply(&mut self, group: String, plan_json: String, reply: ApplyReply) {
        let role = match self.role_of(&group) {
            Ok(r) => r,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let g = self.group(role);
        if let Some(why) = g.health.why_down() {
            let _ = reply.send(Err(ApplyPlanError::GroupFailed {
                group,
                msg: why.to_string(),
            }));
            return;
        }
        if self.switching.contains(&role) {
            let _ = reply.send(Err(ApplyPlanError::Busy(group)));
            return;
        }
        let workers = g.client.clone();
        self.switching.push(role);
        let tx = self.self_tx.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = match workers.plan().await {
                Ok(old) => workers
                    .prepare_plan(&plan_json)
                    .await
                    .map(|p| (old.plan_version, p)),
                Err(e) => Err(e),
            };
            let msg = Command::PlanPrepared(Box::new(Prepared {
                role,
                result,
                started,
                reply,
            }));
            if let Err(mpsc_err) = tx.send(msg) {
                if let Command::PlanPrepared(p) = mpsc_err.0 {
                    workers.abort_plan(0).await;
                    let _ = p.reply.send(Err(ApplyPlanError::Stopped));
                }
            }
        });
    }

    /// A prepare came back: queue the commit, or undo the stage everywhere.
    pub(super) fn prepared(&mut self, p: Prepared) {
        let name = self.group(p.role).name.clone();
        match p.result {
            Ok((old_version, prepared)) => self.pending_commits.push(PendingCommit {
                role: p.role,
                old_version,
                prepared,
                prepare_seconds: p.started.elapsed().as_secs_f64(),
                started: p.started,
                reply: p.reply,
            }),
            Err(e) => {
                self.switching.retain(|r| *r != p.role);
                let workers = self.group(p.role).client.clone();
                tokio::spawn(async move { workers.abort_plan(0).await });
                let err = match e {
                    GroupError::Rank {
                        code: tonic::Code::InvalidArgument | tonic::Code::Unimplemented,
                        message,
                        rank,
                    } => ApplyPlanError::Refused {
                        group: name,
                        msg: format!("rank {rank}: {message}"),
                    },
                    other => ApplyPlanError::NotSwitched {
                        group: name,
                        msg: other.to_string(),
                    },
                };
                tracing::warn!(error = %err, "placement plan not applied");
                let _ = p.reply.send(Err(err));
            }
        }
    }

    /// Commits every prepared plan; called by the loop between two steps.
    pub(super) async fn commit_pending(&mut self) {
        for c in std::mem::take(&mut self.pending_commits) {
            self.switching.retain(|r| *r != c.role);
            let g = self.group(c.role);
            let name = g.name.clone();
            if let Some(why) = g.health.why_down() {
                let _ = c.reply.send(Err(ApplyPlanError::GroupFailed {
                    group: name,
                    msg: why.to_string(),
                }));
                continue;
            }
            let workers = g.client.clone();
            let new_version = c.prepared.first().map_or(0, |p| p.plan_version);
            let t0 = Instant::now();
            let result = workers.commit_plan(new_version).await;
            let commit_seconds = t0.elapsed().as_secs_f64();
            let reply = match result {
                Ok(done) => {
                    let applied = PlanApplied {
                        group: name.clone(),
                        old_version: c.old_version,
                        new_version,
                        experts_loaded: c.prepared.iter().map(|p| p.experts_loaded).sum(),
                        bytes_loaded: c.prepared.iter().map(|p| p.bytes_loaded).sum(),
                        experts_dropped: done.iter().map(|d| d.experts_dropped).sum(),
                        prepare_seconds: c.prepare_seconds,
                        commit_seconds,
                    };
                    tracing::info!(
                        group = %name,
                        old = format!("{:016x}", c.old_version),
                        new = format!("{new_version:016x}"),
                        bytes_loaded = applied.bytes_loaded,
                        experts_loaded = applied.experts_loaded,
                        prepare_s = applied.prepare_seconds,
                        commit_s = commit_seconds,
                        total_s = c.started.elapsed().as_secs_f64(),
                        "placement plan applied"
                    );
                    metrics::counter!("moeflow:placement_switches_total", "group" => name.clone())
                        .increment(1);
                    metrics::counter!("moeflow:placement_bytes_loaded_total", "group" => name)
                        .increment(applied.bytes_loaded);
                    Ok(applied)
                }
                // The ranks agreed that not all of them staged it: nobody switched.
                Err(GroupError::Rank {
                    code: tonic::Code::FailedPrecondition,
                    message,
                    rank,
                }) => Err(ApplyPlanError::NotSwitched {
                    group: name,
                    msg: format!("rank {rank}: {message}"),
                }),
                // A rank failed inside the switch: the group cannot step any more.
                Err(e) => {
                    let msg = e.to_string();
                    self.group_failed(c.role, e);
                    Err(ApplyPlanError::GroupFailed { group: name, msg })
                }
            };
            let _ = c.reply.send(reply);
        }
    }

    /// Answers with the plan `group` runs (asked of its ranks in the background).
    pub(super) fn get_plan(&self, group: String, reply: PlanReply) {
        let role = match self.role_of(&group) {
            Ok(r) => r,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let workers = self.group(role).client.clone();
        tokio::spawn(async move {
            let r = workers
                .plan()
                .await
                .map(|p| GroupPlan {
                    group: group.clone(),
                    plan_json: p.plan_json,
                    version: p.plan_version,
                })
                .map_err(|e| ApplyPlanError::NotSwitched {
                    group,
                    msg: e.to_string(),
                });
            let _ = reply.send(r);
        });
    }
}
