//! `moeflow serve`: a complete local deployment in one command.
//!
//! With no arguments it creates (or reuses) a tiny checkpoint, starts the worker group(s) as
//! separate processes, the router's scheduler, and the OpenAI-compatible HTTP and gRPC front
//! ends, and serves until Ctrl-C or SIGTERM, on which it stops admitting, drains in-flight
//! requests and stops the workers.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use moeflow_frontend::{grpc_service, http_app, serve_http, FrontendState};
use moeflow_router::api::{ModelInfo, SharedBackend};
use moeflow_router::{Scheduler, SchedulerConfig, WorkerGroup};
use moeflow_worker::config::{Arch, ModelConfig};
use moeflow_worker::synth::{init_model, Preset};
use moeflow_worker::tokenizer::Tokenizer;

use crate::launch::{start_local_group, GroupSpec};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Checkpoint directory (Hugging Face layout). Default: a tiny qwen3_moe checkpoint,
    /// created on first use under the moeflow cache directory.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Name clients use as `model` (default: the checkpoint directory's name).
    #[arg(long)]
    served_model_name: Option<String>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8000)]
    port: u16,
    #[arg(long, default_value_t = 50051)]
    grpc_port: u16,
    /// Ranks of the prefill group. 0: aggregated mode (the decode group also prefills, in
    /// chunks).
    #[arg(long, default_value_t = 2)]
    prefill_workers: usize,
    /// Ranks of the decode group.
    #[arg(long, default_value_t = 2)]
    decode_workers: usize,
    /// Placement plan of the prefill group.
    #[arg(long)]
    prefill_placement: Option<PathBuf>,
    /// Placement plan of the decode group (default: contiguous).
    #[arg(long)]
    decode_placement: Option<PathBuf>,
    /// Requests waiting beyond this are refused with 429.
    #[arg(long, default_value_t = 256)]
    max_waiting: usize,
    /// Prompt tokens per step over the group.
    #[arg(long, default_value_t = 2048)]
    prefill_token_budget: usize,
    /// Running sequences per rank.
    #[arg(long, default_value_t = 64)]
    max_running_per_rank: usize,
    /// KV capacity per rank in blocks of 16 tokens.
    #[arg(long, default_value_t = 8192)]
    kv_blocks: usize,
    /// A worker silent for this long is declared dead (milliseconds).
    #[arg(long, default_value_t = 3000)]
    peer_timeout_ms: u64,
    /// How long SIGTERM waits for in-flight requests (seconds).
    #[arg(long, default_value_t = 30)]
    drain_timeout_s: u64,
    /// Extra arguments for every worker (e.g. `--dtype bf16`), whitespace-separated.
    #[arg(long, default_value = "")]
    worker_args: String,
}

/// Where the default checkpoint lives: `$MOEFLOW_HOME`, else `$XDG_CACHE_HOME/moeflow`, else
/// `~/.cache/moeflow`.
fn default_model_dir() -> PathBuf {
    let base = std::env::var_os("MOEFLOW_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("moeflow")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/moeflow")))
        .unwrap_or_else(|| PathBuf::from(".moeflow"));
    base.join("models/tiny-qwen3_moe")
}

fn ensure_default_model(dir: &Path) -> anyhow::Result<()> {
    if dir.join("config.json").exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let s = init_model(Arch::Qwen3Moe, Preset::Tiny, dir, 0)?;
    tracing::info!(path = %dir.display(), params = s.params, "created the default tiny checkpoint");
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.decode_workers == 0 {
        bail!("--decode-workers must be at least 1");
    }
    if args.prefill_workers == 0 && args.prefill_placement.is_some() {
        bail!("--prefill-placement needs a prefill group (--prefill-workers > 0)");
    }
    let model = match &args.model {
        Some(m) => m.clone(),
        None => {
            let d = default_model_dir();
            ensure_default_model(&d)?;
            d
        }
    };
    let config = ModelConfig::from_dir(&model)?;
    let shape = config.shape();
    let tokenizer = Arc::new(
        Tokenizer::from_dir(&model).with_context(|| format!("tokenizer of {}", model.display()))?,
    );
    let name = args.served_model_name.clone().unwrap_or_else(|| {
        model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "moeflow".into())
    });
    let info = ModelInfo {
        id: name.clone(),
        architecture: shape.arch.to_string(),
        max_context: shape.max_position_embeddings as u32,
        vocab_size: shape.vocab_size as u32,
        num_experts: shape.num_experts as u32,
        experts_per_token: shape.experts_per_token as u32,
    };
    // Before anything records: metric handles taken without a recorder record nothing.
    let _metrics = moeflow_frontend::install_recorder();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut extra: Vec<String> = args
        .worker_args
        .split_whitespace()
        .map(str::to_string)
        .collect();
    extra.extend(["--kv-blocks".to_string(), args.kv_blocks.to_string()]);
    let mut prefill = if args.prefill_workers > 0 {
        Some(start_local_group(
            &rt,
            GroupSpec {
                model: &model,
                ranks: args.prefill_workers,
                plan: args.prefill_placement.as_deref(),
                group_id: format!("prefill-{}", std::process::id()),
                peer_timeout_ms: args.peer_timeout_ms,
                extra_args: extra.clone(),
            },
        )?)
    } else {
        None
    };
    let mut decode = start_local_group(
        &rt,
        GroupSpec {
            model: &model,
            ranks: args.decode_workers,
            plan: args.decode_placement.as_deref(),
            group_id: format!("decode-{}", std::process::id()),
            peer_timeout_ms: args.peer_timeout_ms,
            extra_args: extra,
        },
    )?;
    let result = rt.block_on(async {
        let group = WorkerGroup::connect(decode.controls(), Duration::from_secs(120)).await?;
        let prefill_group = match &prefill {
            Some(p) => Some(WorkerGroup::connect(p.controls(), Duration::from_secs(120)).await?),
            None => None,
        };
        let scheduler = Scheduler::start_disaggregated(
            prefill_group.clone(),
            group.clone(),
            SchedulerConfig {
                max_waiting: args.max_waiting,
                prefill_token_budget: args.prefill_token_budget,
                max_running_per_rank: args.max_running_per_rank,
                kv_blocks_per_rank: args.kv_blocks,
                block_size: moeflow_worker::generate::BLOCK_SIZE,
                group_name: "decode".into(),
            },
            info,
        );
        let mut watched = vec![("decode".to_string(), group.clone())];
        if let Some(p) = &prefill_group {
            watched.push(("prefill".to_string(), p.clone()));
        }
        let poller = moeflow_router::stats::spawn_stats_poller(watched, Duration::from_secs(5));
        let backend: SharedBackend = scheduler.clone();
        let state = FrontendState::new(backend, tokenizer);
        let http = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("binding {}:{}", args.host, args.port))?;
        let grpc_addr: std::net::SocketAddr = format!("{}:{}", args.host, args.grpc_port)
            .parse()
            .with_context(|| format!("--host/--grpc-port: {}:{}", args.host, args.grpc_port))?;
        let grpc = tokio::net::TcpListener::bind(grpc_addr).await.with_context(|| format!("binding {grpc_addr}"))?;
        let http_addr = http.local_addr()?;
        let grpc_addr = grpc.local_addr()?;
        println!(
            "moeflow serving `{name}` ({} prefill + {} decode ranks) on http://{http_addr} (OpenAI API) and {grpc_addr} (gRPC)",
            args.prefill_workers, args.decode_workers
        );
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut http_stop = stop_rx.clone();
        let http_task = tokio::spawn(serve_http(http, http_app(state.clone()), async move {
            let _ = http_stop.wait_for(|s| *s).await;
        }));
        let mut grpc_stop = stop_rx.clone();
        let grpc_task = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(grpc_service(state))
                .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(grpc), async move {
                    let _ = grpc_stop.wait_for(|s| *s).await;
                }),
        );
        shutdown_signal().await;
        poller.abort();
        tracing::info!("shutting down: draining in-flight requests");
        scheduler.drain(Duration::from_secs(args.drain_timeout_s)).await;
        let _ = stop_tx.send(true);
        let _ = http_task.await;
        let _ = grpc_task.await;
        group.shutdown().await;
        if let Some(p) = &prefill_group {
            p.shutdown().await;
        }
        anyhow::Ok(())
    });
    decode.stop(Duration::from_secs(5));
    if let Some(p) = prefill.as_mut() {
        p.stop(Duration::from_secs(5));
    }
    result
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
