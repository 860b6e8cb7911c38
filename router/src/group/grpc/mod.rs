//! [`GroupClient`] over gRPC: the control connections to a group's ranks.

mod plan;

use std::time::Duration;

use moeflow_proto::v1 as pb;
use moeflow_proto::v1::worker_client::WorkerClient;
use tonic::transport::{Channel, Endpoint};

use super::{GroupClient, GroupError};

/// The control clients of a group's ranks, by rank.
#[derive(Debug, Clone)]
pub struct WorkerGroup {
    clients: Vec<WorkerClient<Channel>>,
    addrs: Vec<String>,
    step_timeout: Duration,
}

impl WorkerGroup {
    /// Connects to every rank's control address (`host:port`, by rank).
    pub async fn connect(addrs: Vec<String>, step_timeout: Duration) -> Result<Self, GroupError> {
        let mut clients = Vec::with_capacity(addrs.len());
        for (rank, addr) in addrs.iter().enumerate() {
            let err = |msg: String| GroupError::Connect {
                rank,
                addr: addr.clone(),
                msg,
            };
            let ep = Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| err(e.to_string()))?
                .connect_timeout(Duration::from_secs(10))
                .tcp_nodelay(true);
            let ch = ep.connect().await.map_err(|e| err(e.to_string()))?;
            clients.push(
                WorkerClient::new(ch)
                    .max_decoding_message_size(1 << 30)
                    .max_encoding_message_size(1 << 30),
            );
        }
        Ok(Self {
            clients,
            addrs,
            step_timeout,
        })
    }

    pub fn world_size(&self) -> usize {
        self.clients.len()
    }

    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    /// Runs one step: `per_rank[r]` are rank `r`'s chunks (possibly none). Returns each rank's
    /// response, by rank, or the first failure.
    pub async fn step(
        &self,
        step_id: u64,
        per_rank: Vec<Vec<pb::SeqChunk>>,
        return_logits: bool,
    ) -> Result<Vec<pb::StepResponse>, GroupError> {
        if per_rank.len() != self.clients.len() {
            return Err(GroupError::Shape {
                got: per_rank.len(),
                want: self.clients.len(),
            });
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (rank, (client, seqs)) in self.clients.iter().zip(per_rank).enumerate() {
            let mut client = client.clone();
            let timeout = self.step_timeout;
            tasks.spawn(async move {
                let req = pb::StepRequest {
                    step_id,
                    seqs,
                    return_logits,
                };
                let r = tokio::time::timeout(timeout, client.step(req)).await;
                (rank, r)
            });
        }
        let mut out: Vec<Option<pb::StepResponse>> = vec![None; self.clients.len()];
        while let Some(joined) = tasks.join_next().await {
            let Ok((rank, r)) = joined else { continue };
            // The first failing rank decides: the step cannot complete without it, and a rank
            // that hangs must not hold the caller until the step timeout.
            let err = match r {
                Ok(Ok(resp)) => {
                    out[rank] = Some(resp.into_inner());
                    continue;
                }
                Ok(Err(status)) => GroupError::Rank {
                    rank,
                    code: status.code(),
                    message: status.message().to_string(),
                },
                Err(_) => GroupError::Timeout {
                    rank,
                    after: self.step_timeout,
                },
            };
            tasks.abort_all();
            return Err(err);
        }
        Ok(out.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// Frees sequences' KV blocks on `rank`.
    pub async fn release(&self, rank: usize, seq_ids: Vec<u64>) -> Result<u32, GroupError> {
        let Some(client) = self.clients.get(rank) else {
            return Err(GroupError::Shape {
                got: rank + 1,
                want: self.clients.len(),
            });
        };
        let r = client
            .clone()
            .release(pb::ReleaseRequest { seq_ids })
            .await
            .map_err(|s| GroupError::Rank {
                rank,
                code: s.code(),
                message: s.message().to_string(),
            })?;
        Ok(r.into_inner().freed_blocks)
    }

    /// Status of every rank (errors per rank are returned in place).
    pub async fn status(&self) -> Vec<Result<pb::StatusResponse, GroupError>> {
        let mut out = Vec::with_capacity(self.clients.len());
        for (rank, c) in self.clients.iter().enumerate() {
            let r = tokio::time::timeout(
                Duration::from_secs(5),
                c.clone().status(pb::StatusRequest {}),
            )
            .await;
            out.push(match r {
                Ok(Ok(s)) => Ok(s.into_inner()),
                Ok(Err(s)) => Err(GroupError::Rank {
                    rank,
                    code: s.code(),
                    message: s.message().to_string(),
                }),
                Err(_) => Err(GroupError::Timeout {
                    rank,
                    after: Duration::from_secs(5),
                }),
            });
        }
        out
    }

    fn client(&self, rank: usize) -> Result<WorkerClient<Channel>, GroupError> {
        self.clients.get(rank).cloned().ok_or(GroupError::Shape {
            got: rank + 1,
            want: self.clients.len(),
        })
    }

    /// Copies a sequence's KV cache and sampler state out of `rank` (freeing it there when
    /// `release`).
    pub async fn export_kv(
        &self,
        rank: usize,
        seq_id: u64,
        release: bool,
    ) -> Result<pb::KvTransfer, GroupError> {
        let r = tokio::time::timeout(
            self.step_timeout,
            self.client(rank)?
                .export_kv(pb::ExportKvRequest { seq_id, release }),
        )
        .await
        .map_err(|_| GroupError::Timeout {
            rank,
            after: self.step_timeout,
        })?;
        r.map(|r| r.into_inner()).map_err(|s| GroupError::Rank {
            rank,
            code: s.code(),
            message: s.message().to_string(),
        })
    }

    /// Installs a transferred sequence on `rank`.
    pub async fn import_kv(&self, rank: usize, t: pb::KvTransfer) -> Result<(), GroupError> {
        let r = tokio::time::timeout(self.step_timeout, self.client(rank)?.import_kv(t))
            .await
            .map_err(|_| GroupError::Timeout {
                rank,
                after: self.step_timeout,
            })?;
        r.map(|_| ()).map_err(|s| GroupError::Rank {
            rank,
            code: s.code(),
            message: s.message().to_string(),
        })
    }

    /// Asks every rank to stop; ranks that are already gone are ignored.
    pub async fn shutdown(&self) {
        for c in &self.clients {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                c.clone().shutdown(pb::ShutdownRequest {}),
            )
            .await;
        }
    }
}

/// The trait's methods are the inherent ones, so callers holding a `WorkerGroup` need no
/// trait import.
#[tonic::async_trait]
impl GroupClient for WorkerGroup {
    fn world_size(&self) -> usize {
        WorkerGroup::world_size(self)
    }

    async fn step(
        &self,
        step_id: u64,
        per_rank: Vec<Vec<pb::SeqChunk>>,
        return_logits: bool,
    ) -> Result<Vec<pb::StepResponse>, GroupError> {
        WorkerGroup::step(self, step_id, per_rank, return_logits).await
    }

    async fn release(&self, rank: usize, seq_ids: Vec<u64>) -> Result<u32, GroupError> {
        WorkerGroup::release(self, rank, seq_ids).await
    }

    async fn status(&self) -> Vec<Result<pb::StatusResponse, GroupError>> {
        WorkerGroup::status(self).await
    }

    async fn export_kv(
        &self,
        rank: usize,
        seq_id: u64,
        release: bool,
    ) -> Result<pb::KvTransfer, GroupError> {
        WorkerGroup::export_kv(self, rank, seq_id, release).await
    }

    async fn import_kv(&self, rank: usize, transfer: pb::KvTransfer) -> Result<(), GroupError> {
        WorkerGroup::import_kv(self, rank, transfer).await
    }

    async fn plan(&self) -> Result<pb::GetPlanResponse, GroupError> {
        WorkerGroup::plan(self).await
    }

    async fn prepare_plan(
        &self,
        plan_json: &str,
    ) -> Result<Vec<pb::PreparePlanResponse>, GroupError> {
        WorkerGroup::prepare_plan(self, plan_json).await
    }

    async fn commit_plan(&self, version: u64) -> Result<Vec<pb::CommitPlanResponse>, GroupError> {
        WorkerGroup::commit_plan(self, version).await
    }

    async fn abort_plan(&self, version: u64) {
        WorkerGroup::abort_plan(self, version).await
    }
}
