//! `moeflow serve`: a complete local deployment in one command.
//!
//! With no arguments it creates (or reuses) a tiny checkpoint, starts the worker group(s) as
//! separate processes, the router's scheduler, and the OpenAI-compatible HTTP and gRPC front
//! ends, and serves until Ctrl-C or SIGTERM, on which it stops admitting, drains in-flight
//! requests and stops the workers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use moeflow_router::WorkerGroup;
use moeflow_worker::config::Arch;
use moeflow_worker::synth::{init_model, Preset};

use crate::launch::{start_local_group, GroupSpec};
use crate::serving::{
    model_facts, serve_until_signal, start_trace_recorder, DeploymentArgs, ServingArgs,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    layout: DeploymentArgs,
    /// A worker silent for this long is declared dead (milliseconds).
    #[arg(long, default_value_t = 3000)]
    peer_timeout_ms: u64,
    /// Extra arguments for every worker (e.g. `--dtype bf16`), whitespace-separated.
    #[arg(long, default_value = "")]
    worker_args: String,
    /// BENCHMARKING ONLY: every worker's gates select experts by sampling this expert-count
    /// distribution (any trace source, folded onto the model: see `moeflow worker
    /// --route-replay`), to show real load skew on a small model. Generated text is then
    /// meaningless.
    #[arg(long)]
    route_replay: Option<PathBuf>,
    #[command(flatten)]
    serving: ServingArgs,
}

/// Where the default checkpoint lives: `$MOEFLOW_HOME`, else `$XDG_CACHE_HOME/moeflow`, else
/// `~/.cache/moeflow`.
pub fn default_model_dir() -> PathBuf {
    let base = std::env::var_os("MOEFLOW_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("moeflow")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/moeflow")))
        .unwrap_or_else(|| PathBuf::from(".moeflow"));
    base.join("models/tiny-qwen3_moe")
}

pub fn ensure_default_model(dir: &Path) -> anyhow::Result<()> {
    if dir.join("config.json").exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let s = init_model(Arch::Qwen3Moe, Preset::Tiny, dir, 0)?;
    tracing::info!(path = %dir.display(), params = s.params, "created the default tiny checkpoint");
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    args.layout.check()?;
    let model = args.layout.model_dir()?;
    let (info, tokenizer) = model_facts(&model, args.serving.served_model_name.as_deref())?;
    let trace = start_trace_recorder(&args.serving, &model, &info.id)?;
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
    extra.extend([
        "--kv-blocks".to_string(),
        args.serving.kv_blocks.to_string(),
    ]);
    if let Some(src) = &args.route_replay {
        let src = std::fs::canonicalize(src)
            .with_context(|| format!("--route-replay {}", src.display()))?;
        extra.extend(["--route-replay".to_string(), src.display().to_string()]);
    }
    let mut prefill = if args.layout.prefill_workers > 0 {
        Some(start_local_group(
            &rt,
            GroupSpec {
                model: &model,
                ranks: args.layout.prefill_workers,
                plan: args.layout.prefill_placement.as_deref(),
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
            ranks: args.layout.decode_workers,
            plan: args.layout.decode_placement.as_deref(),
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
        serve_until_signal(prefill_group, group, info, tokenizer, &args.serving, trace).await
    });
    decode.stop(Duration::from_secs(5));
    if let Some(p) = prefill.as_mut() {
        p.stop(Duration::from_secs(5));
    }
    result
}
