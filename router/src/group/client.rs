//! What the scheduler needs from a worker group, so that scheduling can run against any
//! implementation: the gRPC [`super::WorkerGroup`] in production, an in-memory group in the
//! scheduler's unit tests.

use moeflow_proto::v1 as pb;

use super::GroupError;

/// One worker group as the router drives it: lockstep steps over all ranks, per-rank
/// sequence operations (release, KV export/import) and the two-phase placement switch.
///
/// Methods that address one rank fail with [`GroupError::Shape`] for a rank outside the group.
#[tonic::async_trait]
pub trait GroupClient: Send + Sync + 'static {
    /// Ranks in the group; the length of every step's `per_rank`.
    fn world_size(&self) -> usize;

    /// Runs one step: `per_rank[r]` are rank `r`'s chunks (possibly none). Returns each
    /// rank's response, by rank, or the first failure: a step completes on all ranks or fails.
    async fn step(
        &self,
        step_id: u64,
        per_rank: Vec<Vec<pb::SeqChunk>>,
        return_logits: bool,
    ) -> Result<Vec<pb::StepResponse>, GroupError>;

    /// Frees sequences' KV blocks on `rank`; returns the blocks freed.
    async fn release(&self, rank: usize, seq_ids: Vec<u64>) -> Result<u32, GroupError>;

    /// Status of every rank, by rank (errors per rank in place).
    async fn status(&self) -> Vec<Result<pb::StatusResponse, GroupError>>;

    /// Copies a sequence's KV cache and sampler state out of `rank` (freeing it there when
    /// `release`).
    async fn export_kv(
        &self,
        rank: usize,
        seq_id: u64,
        release: bool,
    ) -> Result<pb::KvTransfer, GroupError>;

    /// Installs a transferred sequence on `rank`.
    async fn import_kv(&self, rank: usize, transfer: pb::KvTransfer) -> Result<(), GroupError>;

    /// The plan the group runs; an error names a rank that runs another one.
    async fn plan(&self) -> Result<pb::GetPlanResponse, GroupError>;

    /// Every rank checks `plan_json` and stages the experts it gains while steps go on.
    /// Nothing changes until [`GroupClient::commit_plan`].
    async fn prepare_plan(
        &self,
        plan_json: &str,
    ) -> Result<Vec<pb::PreparePlanResponse>, GroupError>;

    /// Switches every rank to the staged plan `version`, all or none; send it between two
    /// steps only. `FailedPrecondition` means not every rank staged it and none switched.
    async fn commit_plan(&self, version: u64) -> Result<Vec<pb::CommitPlanResponse>, GroupError>;

    /// Drops a staged plan on every rank (`0`: whatever is staged); failures are ignored,
    /// since a staged plan does nothing until committed.
    async fn abort_plan(&self, version: u64);
}
