//! The gRPC `Worker` service: the coordinator's view of one rank.

use moeflow_api::SamplingParams;
use moeflow_proto::v1 as pb;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::engine::{ChunkInput, EngineHandle, StepInput, Transfer};
use super::replan::{self, ReplanContext, ReplanError};
use crate::error::ModelError;
use crate::kv_cache::SeqKv;
use crate::moe::SeqRouting;

/// Serves one rank's engine over gRPC.
#[derive(Clone)]
pub struct WorkerService {
    engine: EngineHandle,
    rank: u32,
    world_size: u32,
    model_fingerprint: String,
    plan_fingerprint: u64,
    shutdown: watch::Sender<bool>,
    replan: Option<std::sync::Arc<ReplanContext>>,
}

impl WorkerService {
    pub fn new(
        engine: EngineHandle,
        rank: u32,
        world_size: u32,
        model_fingerprint: String,
        plan_fingerprint: u64,
    ) -> (Self, watch::Receiver<bool>) {
        let (shutdown, rx) = watch::channel(false);
        (
            Self {
                engine,
                rank,
                world_size,
                model_fingerprint,
                plan_fingerprint,
                shutdown,
                replan: None,
            },
            rx,
        )
    }

    /// Enables live re-placement (`PreparePlan` / `CommitPlan`): the engine must have been
    /// given its plan ([`super::Engine::with_plan`]).
    pub fn with_replanning(mut self, ctx: ReplanContext) -> Self {
        self.replan = Some(std::sync::Arc::new(ctx));
        self
    }
}

fn replan_status(e: ReplanError) -> Status {
    match e {
        ReplanError::Unsupported => Status::unimplemented(e.to_string()),
        _ => Status::invalid_argument(e.to_string()),
    }
}

fn status_of(e: ModelError) -> Status {
    match e {
        ModelError::Input(_) | ModelError::Kv(_) => Status::invalid_argument(e.to_string()),
        ModelError::Dispatch(_) | ModelError::Comm(_) => Status::unavailable(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

fn sampling_from_pb(seq: u64, s: pb::WorkerSampling) -> Result<SamplingParams, Status> {
    let p = SamplingParams {
        temperature: s.temperature,
        top_p: if s.top_p == 0.0 { 1.0 } else { s.top_p },
        top_k: s.top_k,
        seed: s.seed,
        top_logprobs: s.top_logprobs,
    };
    p.validate()
        .map_err(|e| Status::invalid_argument(format!("sequence {seq}: {e}")))?;
    Ok(p)
}

fn f32s_to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn bytes_to_f32s(seq: u64, field: &str, b: &[u8]) -> Result<Vec<f32>, Status> {
    if !b.len().is_multiple_of(4) {
        return Err(Status::invalid_argument(format!(
            "sequence {seq}: {field} is not whole f32 values"
        )));
    }
    Ok(b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn routing_to_pb(r: SeqRouting) -> pb::SeqRouting {
    pb::SeqRouting {
        layers: r.layers,
        top_k: r.top_k as u32,
        tokens: r.tokens as u32,
        expert_ids: r.ids.iter().flat_map(|x| x.to_le_bytes()).collect(),
        weights: f32s_to_bytes(&r.weights),
        prompt: r.prompt,
    }
}

fn chunk_from_pb(c: pb::SeqChunk) -> Result<ChunkInput, Status> {
    let sampling = match c.sampling {
        Some(s) => Some(sampling_from_pb(c.seq_id, s)?),
        None => None,
    };
    Ok(ChunkInput {
        seq: c.seq_id,
        tokens: c.tokens,
        start: c.start as usize,
        prompt: c.prompt,
        sampling,
        sample: c.sample,
        trace: c.trace,
    })
}

#[tonic::async_trait]
impl pb::worker_server::Worker for WorkerService {
    async fn step(
        &self,
        request: Request<pb::StepRequest>,
    ) -> Result<Response<pb::StepResponse>, Status> {
        let req = request.into_inner();
        let seqs = req
            .seqs
            .into_iter()
            .map(chunk_from_pb)
            .collect::<Result<Vec<_>, _>>()?;
        let (outputs, secs) = self
            .engine
            .step(StepInput {
                seqs,
                return_logits: req.return_logits,
            })
            .await
            .map_err(status_of)?;
        let results = outputs
            .into_iter()
            .map(|o| pb::SeqResult {
                seq_id: o.seq,
                token: o.sample.as_ref().map_or(0, |s| s.token),
                logprob: o.sample.as_ref().map_or(0.0, |s| s.logprob),
                logits: o.logits.unwrap_or_default(),
                sampled: o.sample.is_some(),
                routing: o.routing.map(routing_to_pb),
                top_logprobs: o
                    .sample
                    .map(|s| s.top)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(token, logprob)| pb::TokenLogprob { token, logprob })
                    .collect(),
            })
            .collect();
        Ok(Response::new(pb::StepResponse {
            step_id: req.step_id,
            results,
            forward_seconds: secs,
        }))
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let freed = self
            .engine
            .release(request.into_inner().seq_ids)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::ReleaseResponse {
            freed_blocks: freed as u32,
        }))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let s = self.engine.status().await.map_err(status_of)?;
        Ok(Response::new(pb::StatusResponse {
            rank: self.rank,
            world_size: self.world_size,
            running_sequences: s.running_sequences as u32,
            kv_usage: s.kv_usage,
            kv_free_blocks: s.kv_free_blocks as u32,
            ep_stats_json: s.dispatch_stats.unwrap_or_default(),
            model_fingerprint: self.model_fingerprint.clone(),
            plan_fingerprint: s.plan_fingerprint.unwrap_or(self.plan_fingerprint),
        }))
    }

    async fn export_kv(
        &self,
        request: Request<pb::ExportKvRequest>,
    ) -> Result<Response<pb::KvTransfer>, Status> {
        let req = request.into_inner();
        let t = self
            .engine
            .export(req.seq_id, req.release)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::KvTransfer {
            seq_id: t.seq,
            len: t.kv.len as u32,
            keys: f32s_to_bytes(&t.kv.keys),
            values: f32s_to_bytes(&t.kv.values),
            sampling: Some(pb::WorkerSampling {
                temperature: t.sampling.temperature,
                top_p: t.sampling.top_p,
                top_k: t.sampling.top_k,
                seed: t.sampling.seed,
                top_logprobs: t.sampling.top_logprobs,
            }),
            sampler_seed: t.seed,
            sampler_draws: t.draws,
        }))
    }

    async fn import_kv(
        &self,
        request: Request<pb::KvTransfer>,
    ) -> Result<Response<pb::ImportKvResponse>, Status> {
        let t = request.into_inner();
        let seq = t.seq_id;
        let sampling = sampling_from_pb(seq, t.sampling.unwrap_or_default())?;
        let transfer = Transfer {
            seq,
            kv: SeqKv {
                len: t.len as usize,
                keys: bytes_to_f32s(seq, "keys", &t.keys)?,
                values: bytes_to_f32s(seq, "values", &t.values)?,
            },
            sampling,
            seed: t.sampler_seed,
            draws: t.sampler_draws,
        };
        self.engine.import(transfer).await.map_err(status_of)?;
        Ok(Response::new(pb::ImportKvResponse {}))
    }

    async fn prepare_plan(
        &self,
        request: Request<pb::PreparePlanRequest>,
    ) -> Result<Response<pb::PreparePlanResponse>, Status> {
        let ctx = self
            .replan
            .clone()
            .ok_or_else(|| replan_status(ReplanError::Unsupported))?;
        let plan =
            replan::check_plan(&request.into_inner().plan_json, &ctx).map_err(replan_status)?;
        let current = self
            .engine
            .plan()
            .await
            .map_err(status_of)?
            .ok_or_else(|| replan_status(ReplanError::Unsupported))?;
        let dropped = replan::drops(&current, &plan, ctx.rank).len();
        // A thread of its own at the lowest CPU priority: serving steps keep the cores, the
        // experts load in what is left (the prepare may take longer; no step waits for it).
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("moeflow-stage".into())
            .spawn(move || {
                replan::lower_thread_priority();
                let _ = tx.send(replan::stage(plan, &current, &ctx));
            })
            .map_err(|e| Status::internal(format!("starting the expert loader: {e}")))?;
        let staged = rx
            .await
            .map_err(|_| Status::internal("expert loading stopped"))?
            .map_err(status_of)?;
        let resp = pb::PreparePlanResponse {
            plan_version: staged.version,
            experts_loaded: staged.gained.len() as u32,
            bytes_loaded: staged.bytes_loaded,
            experts_dropped: dropped as u32,
            load_seconds: staged.load_seconds,
        };
        tracing::info!(
            version = format!("{:016x}", staged.version),
            experts = staged.gained.len(),
            bytes = staged.bytes_loaded,
            "staged placement plan"
        );
        self.engine.stage_plan(staged).await.map_err(status_of)?;
        Ok(Response::new(resp))
    }

    async fn commit_plan(
        &self,
        request: Request<pb::CommitPlanRequest>,
    ) -> Result<Response<pb::CommitPlanResponse>, Status> {
        let version = request.into_inner().plan_version;
        match self.engine.commit_plan(version).await {
            Ok(o) => Ok(Response::new(pb::CommitPlanResponse {
                plan_version: o.plan_version,
                experts_dropped: o.experts_dropped as u32,
                commit_seconds: o.seconds,
            })),
            // The ranks did not all stage the plan: nobody switched.
            Err(ModelError::Input(m)) => Err(Status::failed_precondition(m)),
            Err(e) => Err(status_of(e)),
        }
    }

    async fn abort_plan(
        &self,
        request: Request<pb::AbortPlanRequest>,
    ) -> Result<Response<pb::AbortPlanResponse>, Status> {
        let v = request.into_inner().plan_version;
        self.engine
            .abort_plan((v != 0).then_some(v))
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::AbortPlanResponse {}))
    }

    async fn get_plan(
        &self,
        _request: Request<pb::GetPlanRequest>,
    ) -> Result<Response<pb::GetPlanResponse>, Status> {
        let plan = self
            .engine
            .plan()
            .await
            .map_err(status_of)?
            .ok_or_else(|| Status::not_found("this worker was started without a placement plan"))?;
        Ok(Response::new(pb::GetPlanResponse {
            plan_version: plan.fingerprint(),
            plan_json: plan.to_json_pretty(),
        }))
    }

    async fn shutdown(
        &self,
        _request: Request<pb::ShutdownRequest>,
    ) -> Result<Response<pb::ShutdownResponse>, Status> {
        self.engine.shutdown();
        let _ = self.shutdown.send(true);
        Ok(Response::new(pb::ShutdownResponse {}))
    }
}
