//! What `moeflow serve` and `moeflow router` share once their worker groups exist: the
//! scheduler, the worker-statistics poller, the HTTP and gRPC front ends, and the SIGTERM drain.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use moeflow_api::{ModelInfo, SharedBackend};
use moeflow_frontend::{grpc_service, http_app, serve_http, FrontendState};
use moeflow_router::admin::AdminService;
use moeflow_router::rebalance::{spawn_rebalancer, RebalanceConfig};
use moeflow_router::trace::{TraceRecorder, TraceSampler};
use moeflow_router::{Scheduler, SchedulerConfig, WorkerGroup};
use moeflow_tokenizer::Tokenizer;
use moeflow_worker::config::ModelConfig;

/// The model and the two worker groups, shared by `serve` and `router`.
#[derive(Debug, Clone, clap::Args)]
pub struct DeploymentArgs {
    /// Checkpoint directory (Hugging Face layout); every worker loads the same one (checked by
    /// fingerprint). Default: a tiny qwen3_moe checkpoint, created on first use under the
    /// moeflow cache directory.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Ranks of the prefill group. 0: aggregated mode (the decode group also prefills, in
    /// chunks).
    #[arg(long, default_value_t = 2)]
    pub prefill_workers: usize,
    /// Ranks of the decode group.
    #[arg(long, default_value_t = 2)]
    pub decode_workers: usize,
    /// Placement plan of the prefill group (default: contiguous).
    #[arg(long)]
    pub prefill_placement: Option<PathBuf>,
    /// Placement plan of the decode group (default: contiguous).
    #[arg(long)]
    pub decode_placement: Option<PathBuf>,
}

impl DeploymentArgs {
    /// Refuses group sizes and plans that cannot form a deployment.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.decode_workers == 0 {
            anyhow::bail!("--decode-workers must be at least 1");
        }
        if self.prefill_workers == 0 && self.prefill_placement.is_some() {
            anyhow::bail!("--prefill-placement needs a prefill group (--prefill-workers > 0)");
        }
        Ok(())
    }

    /// `--model`, or the default tiny checkpoint (written on first use).
    pub fn model_dir(&self) -> anyhow::Result<PathBuf> {
        match &self.model {
            Some(m) => Ok(m.clone()),
            None => {
                let d = crate::cmd::serve::default_model_dir();
                crate::cmd::serve::ensure_default_model(&d)?;
                Ok(d)
            }
        }
    }
}

/// Front-end and scheduling options shared by `serve` and `router`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServingArgs {
    /// Name clients use as `model` (default: the checkpoint directory's name).
    #[arg(long)]
    pub served_model_name: Option<String>,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    #[arg(long, default_value_t = 50051)]
    pub grpc_port: u16,
    /// Requests waiting beyond this are refused with 429.
    #[arg(long, default_value_t = 256)]
    pub max_waiting: usize,
    /// Prompt tokens per step over a group.
    #[arg(long, default_value_t = 2048)]
    pub prefill_token_budget: usize,
    /// Running sequences per rank.
    #[arg(long, default_value_t = 64)]
    pub max_running_per_rank: usize,
    /// KV capacity per rank in blocks of 16 tokens.
    #[arg(long, default_value_t = 8192)]
    pub kv_blocks: usize,
    /// How long SIGTERM waits for in-flight requests (seconds).
    #[arg(long, default_value_t = 30)]
    pub drain_timeout_s: u64,
    /// Record the experts every token of every sampled request selected, at every MoE layer,
    /// under this directory: the paper's JSON tree (`paper/<org>/<model>/<workload>/<id>.json`)
    /// and the binary columnar file `trace.mfbin`.
    #[arg(long)]
    pub trace_dir: Option<PathBuf>,
    /// Fraction of requests traced, chosen by a hash of the request id (reproducible).
    #[arg(long, default_value_t = 1.0, requires = "trace_dir")]
    pub trace_sample: f64,
    /// Finished traces waiting for the writer beyond this many are dropped (and counted in
    /// `moeflow:trace_dropped_total`) rather than slow serving down.
    #[arg(long, default_value_t = 1024)]
    pub trace_queue: usize,
    #[command(flatten)]
    pub rebalance: RebalanceArgs,
}

/// Periodic re-placement of the decode group.
#[derive(Debug, Clone, clap::Args)]
pub struct RebalanceArgs {
    /// Re-plan the decode group every this many seconds from the expert loads of the last
    /// window, and apply the plan when its modelled gain is above --rebalance-threshold.
    #[arg(long)]
    pub rebalance_every: Option<f64>,
    /// Minimum modelled gain (busiest-rank load, old over new, minus 1) worth a switch.
    #[arg(long, default_value_t = 0.05)]
    pub rebalance_threshold: f64,
    /// Planner that makes the new plan from the window's loads (`moeflow place plan --algo`
    /// names: eplb, prefill-aware, traffic-aware, ...). EPLB balances exactly the token load
    /// the gain is judged by; the new plan keeps the current one's slots per rank.
    // Checked when the flags are parsed, before any worker starts.
    #[arg(
        long,
        default_value = "eplb",
        value_parser = clap::builder::PossibleValuesParser::new(
            moeflow_placement::planner::NAMES.iter().copied()
        )
    )]
    pub rebalance_algo: String,
}

/// The served model's facts and tokenizer.
pub fn model_facts(
    model: &Path,
    served_name: Option<&str>,
) -> anyhow::Result<(ModelInfo, Arc<Tokenizer>)> {
    let shape = ModelConfig::from_dir(model)?.shape();
    let tokenizer = Arc::new(
        Tokenizer::from_dir(model).with_context(|| format!("tokenizer of {}", model.display()))?,
    );
    let name = served_name.map(str::to_string).unwrap_or_else(|| {
        model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "moeflow".into())
    });
    Ok((
        ModelInfo {
            id: name,
            architecture: shape.arch.to_string(),
            max_context: shape.max_position_embeddings as u32,
            vocab_size: shape.vocab_size as u32,
            num_experts: shape.num_experts as u32,
            experts_per_token: shape.experts_per_token as u32,
        },
        tokenizer,
    ))
}

/// The trace recorder `--trace-dir` asks for; None without it or with `--trace-sample 0`
/// (then the workers are never asked to capture anything and nothing is written).
pub fn start_trace_recorder(
    args: &ServingArgs,
    model: &Path,
    model_id: &str,
) -> anyhow::Result<Option<TraceRecorder>> {
    let Some(dir) = &args.trace_dir else {
        return Ok(None);
    };
    let sampler = TraceSampler::new(args.trace_sample)?;
    if sampler.fraction() == 0.0 {
        return Ok(None);
    }
    let s = ModelConfig::from_dir(model)?.shape();
    let shape = moeflow_trace::ModelShape {
        model: Some(model_id.to_string()),
        num_layers: s.num_layers,
        num_experts: s.num_experts,
        top_k: s.experts_per_token,
        moe_layers: s.moe_layers,
    };
    let sinks = moeflow_router::trace::open_sinks(dir, model_id, &shape)
        .with_context(|| format!("--trace-dir {}", dir.display()))?;
    let recorder = TraceRecorder::start(sampler, sinks, args.trace_queue)?;
    tracing::info!(dir = %dir.display(), sample = args.trace_sample, "recording expert traces");
    Ok(Some(recorder))
}

/// Serves until Ctrl-C or SIGTERM, then drains and asks the workers to stop.
pub async fn serve_until_signal(
    prefill: Option<WorkerGroup>,
    decode: WorkerGroup,
    info: ModelInfo,
    tokenizer: Arc<Tokenizer>,
    args: &ServingArgs,
    trace: Option<TraceRecorder>,
) -> anyhow::Result<()> {
    let name = info.id.clone();
    let top_k = info.experts_per_token;
    let (np, nd) = (
        prefill.as_ref().map_or(0, WorkerGroup::world_size),
        decode.world_size(),
    );
    let scheduler = Scheduler::start_disaggregated(
        prefill.clone(),
        decode.clone(),
        SchedulerConfig {
            max_waiting: args.max_waiting,
            prefill_token_budget: args.prefill_token_budget,
            max_running_per_rank: args.max_running_per_rank,
            kv_blocks_per_rank: args.kv_blocks,
            block_size: moeflow_worker::generate::BLOCK_SIZE,
            group_name: "decode".into(),
            trace: trace.clone(),
        },
        info,
    );
    let mut watched = vec![("decode".to_string(), decode.clone())];
    if let Some(p) = &prefill {
        watched.push(("prefill".to_string(), p.clone()));
    }
    let poller = moeflow_router::stats::spawn_stats_poller(watched, Duration::from_secs(5));
    let rebalancer = match args.rebalance.rebalance_every {
        Some(secs) if secs > 0.0 && secs.is_finite() => {
            let planner = moeflow_placement::planner::by_name(&args.rebalance.rebalance_algo)
                .context("--rebalance-algo")?;
            tracing::info!(
                every_s = secs,
                threshold = args.rebalance.rebalance_threshold,
                planner = planner.name(),
                "rebalancing the decode group"
            );
            Some(spawn_rebalancer(
                scheduler.clone(),
                decode.clone(),
                Arc::from(planner),
                RebalanceConfig {
                    every: Duration::from_secs_f64(secs),
                    threshold: args.rebalance.rebalance_threshold,
                    group: "decode".into(),
                    top_k: top_k as usize,
                },
            ))
        }
        Some(secs) => {
            anyhow::bail!("--rebalance-every: must be a positive number of seconds, got {secs}")
        }
        None => None,
    };
    let admin = AdminService::new(scheduler.clone()).into_server();
    let backend: SharedBackend = scheduler.clone();
    let state = FrontendState::new(backend, tokenizer);
    let http = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
        .await
        .with_context(|| format!("binding {}:{}", args.host, args.port))?;
    let grpc = tokio::net::TcpListener::bind((args.host.as_str(), args.grpc_port))
        .await
        .with_context(|| format!("binding {}:{}", args.host, args.grpc_port))?;
    let http_addr = http.local_addr()?;
    let grpc_addr = grpc.local_addr()?;
    println!("moeflow serving `{name}` ({np} prefill + {nd} decode ranks) on http://{http_addr} (OpenAI API) and {grpc_addr} (gRPC)");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut http_stop = stop_rx.clone();
    let http_task = tokio::spawn(serve_http(http, http_app(state.clone()), async move {
        let _ = http_stop.wait_for(|s| *s).await;
    }));
    let mut grpc_stop = stop_rx.clone();
    let grpc_task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(grpc_service(state))
            .add_service(admin)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(grpc),
                async move {
                    let _ = grpc_stop.wait_for(|s| *s).await;
                },
            ),
    );
    shutdown_signal().await;
    poller.abort();
    if let Some(r) = rebalancer {
        r.abort();
    }
    tracing::info!("shutting down: draining in-flight requests");
    scheduler
        .drain(Duration::from_secs(args.drain_timeout_s))
        .await;
    let _ = stop_tx.send(true);
    let _ = http_task.await;
    let _ = grpc_task.await;
    if let Some(t) = &trace {
        // Drained: every trace is queued; write them and complete the files.
        tokio::task::block_in_place(|| t.close());
    }
    decode.shutdown().await;
    if let Some(p) = &prefill {
        p.shutdown().await;
    }
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        rebalance: RebalanceArgs,
    }

    /// A planner name that does not exist is refused while parsing the flags, before any
    /// worker process starts; every name the placement crate knows is accepted.
    #[test]
    fn rebalance_algo_is_checked_at_parse_time() {
        let err = Cli::try_parse_from(["x", "--rebalance-algo", "nope"]).unwrap_err();
        assert!(err.to_string().contains("--rebalance-algo"), "{err}");
        for name in moeflow_placement::planner::NAMES {
            let cli = Cli::try_parse_from(["x", "--rebalance-algo", name]).unwrap();
            assert_eq!(cli.rebalance.rebalance_algo, *name);
        }
    }
}
