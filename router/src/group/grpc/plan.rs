//! The two-phase placement switch of a group, seen from the router: prepare on every rank,
//! then commit (or abort) on every rank.

use std::time::Duration;

use moeflow_proto::v1 as pb;
use tonic::transport::Channel;

use super::WorkerGroup;
use crate::group::GroupError;

/// Loading experts may take long on large models; the group keeps serving meanwhile.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(1800);

fn rank_err(rank: usize, s: tonic::Status) -> GroupError {
    GroupError::Rank {
        rank,
        code: s.code(),
        message: s.message().to_string(),
    }
}

impl WorkerGroup {
    /// Runs `call` on every rank at once; all answers by rank, or the first failure.
    async fn on_all<T, F, Fut>(&self, timeout: Duration, call: F) -> Result<Vec<T>, GroupError>
    where
        T: Send + 'static,
        F: Fn(usize, pb::worker_client::WorkerClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>
            + Send
            + 'static,
    {
        let mut tasks = tokio::task::JoinSet::new();
        for (rank, client) in self.clients.iter().enumerate() {
            let fut = call(rank, client.clone());
            tasks.spawn(async move { (rank, tokio::time::timeout(timeout, fut).await) });
        }
        let mut out: Vec<Option<T>> = (0..self.clients.len()).map(|_| None).collect();
        while let Some(joined) = tasks.join_next().await {
            let Ok((rank, r)) = joined else { continue };
            match r {
                Ok(Ok(resp)) => out[rank] = Some(resp.into_inner()),
                Ok(Err(s)) => {
                    tasks.abort_all();
                    return Err(rank_err(rank, s));
                }
                Err(_) => {
                    tasks.abort_all();
                    return Err(GroupError::Timeout {
                        rank,
                        after: timeout,
                    });
                }
            }
        }
        out.into_iter()
            .enumerate()
            .map(|(rank, o)| {
                o.ok_or(GroupError::Timeout {
                    rank,
                    after: timeout,
                })
            })
            .collect()
    }

    /// Every rank checks `plan_json` against the model and the group and loads the experts
    /// it gains, while steps continue. Nothing changes until [`WorkerGroup::commit_plan`].
    pub async fn prepare_plan(
        &self,
        plan_json: &str,
    ) -> Result<Vec<pb::PreparePlanResponse>, GroupError> {
        let json = plan_json.to_string();
        self.on_all(PREPARE_TIMEOUT, move |_, mut c| {
            let req = pb::PreparePlanRequest {
                plan_json: json.clone(),
            };
            async move { c.prepare_plan(req).await }
        })
        .await
    }

    /// Switches every rank to the prepared plan `version`. Send it between two steps only.
    /// A `FailedPrecondition` answer means the ranks did not all stage it and none switched.
    pub async fn commit_plan(
        &self,
        version: u64,
    ) -> Result<Vec<pb::CommitPlanResponse>, GroupError> {
        self.on_all(self.step_timeout, move |_, mut c| async move {
            c.commit_plan(pb::CommitPlanRequest {
                plan_version: version,
            })
            .await
        })
        .await
    }

    /// Drops a staged plan on every rank (`0`: whatever is staged). Ranks that fail are
    /// ignored: a staged plan does nothing until committed.
    pub async fn abort_plan(&self, version: u64) {
        let _ = self
            .on_all(Duration::from_secs(10), move |_, mut c| async move {
                c.abort_plan(pb::AbortPlanRequest {
                    plan_version: version,
                })
                .await
            })
            .await;
    }

    /// The plan the group runs, as rank 0 reports it, checked against every rank's
    /// fingerprint (a mismatch is reported as an error naming the rank).
    pub async fn plan(&self) -> Result<pb::GetPlanResponse, GroupError> {
        let all = self
            .on_all(Duration::from_secs(10), |_, mut c| async move {
                c.get_plan(pb::GetPlanRequest {}).await
            })
            .await?;
        let mut it = all.into_iter().enumerate();
        let Some((_, first)) = it.next() else {
            return Err(GroupError::Shape { got: 0, want: 1 });
        };
        for (rank, p) in it {
            if p.plan_version != first.plan_version {
                return Err(GroupError::Rank {
                    rank,
                    code: tonic::Code::DataLoss,
                    message: format!(
                        "runs plan {:016x}, rank 0 runs {:016x}",
                        p.plan_version, first.plan_version
                    ),
                });
            }
        }
        Ok(first)
    }
}
