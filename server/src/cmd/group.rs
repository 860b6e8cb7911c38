//! `moeflow group`: run prompts on a local expert-parallel worker group.
//!
//! It hosts the group's bootstrap coordinator, starts `--ranks` worker processes, spreads the
//! prompts over the ranks (attention is data-parallel: each rank runs its own sequences) and
//! drives prefill and decode steps in lockstep until every prompt is complete. The output is
//! the same JSON as `moeflow generate --json`, one line per prompt, so the two can be compared.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use moeflow_proto::v1 as pb;
use moeflow_router::WorkerGroup;
use moeflow_tokenizer::Tokenizer;

use crate::launch::{start_local_group, GroupSpec};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Checkpoint directory (Hugging Face layout).
    #[arg(long)]
    model: PathBuf,
    /// Number of worker processes (ranks).
    #[arg(long, default_value_t = 2)]
    ranks: usize,
    /// Placement plan (moeflow.placement/v1); default: contiguous.
    #[arg(long)]
    plan: Option<PathBuf>,
    /// A prompt (repeatable).
    #[arg(long)]
    prompt: Vec<String>,
    /// A prompt as comma-separated token ids (repeatable).
    #[arg(long)]
    prompt_ids: Vec<String>,
    #[arg(long, default_value_t = 32)]
    max_tokens: usize,
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    top_k: u32,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long)]
    ignore_eos: bool,
    /// Include every step's last-position logits in the JSON output.
    #[arg(long)]
    return_logits: bool,
    /// Print each rank's data-movement counters (JSON) after the run.
    #[arg(long)]
    stats: bool,
    /// A peer silent for this long is declared dead (milliseconds).
    #[arg(long, default_value_t = 3000)]
    peer_timeout_ms: u64,
    /// Longest a single step may take before the run fails (seconds).
    #[arg(long, default_value_t = 120)]
    step_timeout_s: u64,
    /// Extra arguments for every worker (e.g. `--dtype bf16`), whitespace-separated.
    #[arg(long, default_value = "")]
    worker_args: String,
}

struct Seq {
    id: u64,
    rank: usize,
    prompt: Vec<u32>,
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
    logits: Vec<Vec<f32>>,
    finish: Option<&'static str>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.ranks == 0 {
        bail!("--ranks must be at least 1");
    }
    let tokenizer = if args.model.join("tokenizer.json").exists() {
        Some(Tokenizer::from_dir(&args.model)?)
    } else {
        None
    };
    let mut prompts: Vec<Vec<u32>> = Vec::new();
    for p in &args.prompt {
        let t = tokenizer
            .as_ref()
            .context("--prompt needs a tokenizer.json; use --prompt-ids")?;
        prompts.push(t.encode(p)?);
    }
    for p in &args.prompt_ids {
        let ids = p
            .split(',')
            .map(|s| s.trim().parse::<u32>())
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("--prompt-ids `{p}`"))?;
        prompts.push(ids);
    }
    if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
        bail!("give at least one non-empty --prompt or --prompt-ids");
    }
    let stop: Vec<u32> = match (&tokenizer, args.ignore_eos) {
        (Some(t), false) => t.eos_token_ids().to_vec(),
        _ => Vec::new(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let extra: Vec<String> = args
        .worker_args
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let mut group = start_local_group(
        &rt,
        GroupSpec {
            model: &args.model,
            ranks: args.ranks,
            plan: args.plan.as_deref(),
            group_id: format!("group-{}", std::process::id()),
            peer_timeout_ms: args.peer_timeout_ms,
            extra_args: extra,
        },
    )?;
    let result = rt.block_on(drive(&args, &group.controls(), prompts, &stop));
    group.stop(Duration::from_secs(5));
    let (seqs, stats) = result?;
    for s in &seqs {
        let text = match &tokenizer {
            Some(t) => Some(t.decode(&s.tokens)?),
            None => None,
        };
        let mut v = serde_json::json!({
            "prompt_token_ids": s.prompt,
            "token_ids": s.tokens,
            "logprobs": s.logprobs,
            "text": text,
            "finish_reason": s.finish.unwrap_or("length"),
            "rank": s.rank,
        });
        if args.return_logits {
            v["logits"] = serde_json::json!(s.logits);
        }
        println!("{v}");
    }
    if args.stats {
        for s in stats {
            println!("{s}");
        }
    }
    Ok(())
}

async fn drive(
    args: &Args,
    controls: &[String],
    prompts: Vec<Vec<u32>>,
    stop: &[u32],
) -> anyhow::Result<(Vec<Seq>, Vec<String>)> {
    let group =
        WorkerGroup::connect(controls.to_vec(), Duration::from_secs(args.step_timeout_s)).await?;
    let n = args.ranks;
    let mut seqs: Vec<Seq> = prompts
        .into_iter()
        .enumerate()
        .map(|(i, p)| Seq {
            id: i as u64,
            rank: i % n,
            prompt: p,
            tokens: Vec::new(),
            logprobs: Vec::new(),
            logits: Vec::new(),
            finish: None,
        })
        .collect();
    let sampling = pb::WorkerSampling {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        seed: args.seed,
        top_logprobs: 0,
    };
    let mut step_id = 0u64;
    loop {
        let mut per_rank: Vec<Vec<pb::SeqChunk>> = vec![Vec::new(); n];
        for s in seqs.iter().filter(|s| s.finish.is_none()) {
            let (tokens, start, prompt) = match s.tokens.last() {
                None => (s.prompt.clone(), 0, true),
                Some(&t) => (vec![t], s.prompt.len() + s.tokens.len() - 1, false),
            };
            per_rank[s.rank].push(pb::SeqChunk {
                seq_id: s.id,
                tokens,
                start: start as u32,
                prompt,
                sampling: prompt.then_some(sampling),
                sample: true,
                trace: false,
            });
        }
        if per_rank.iter().all(Vec::is_empty) {
            break;
        }
        let responses = group
            .step(step_id, per_rank, args.return_logits)
            .await
            .with_context(|| format!("step {step_id} failed"))?;
        step_id += 1;
        let mut finished: Vec<Vec<u64>> = vec![Vec::new(); n];
        for r in responses.into_iter().flat_map(|r| r.results) {
            let Some(s) = seqs.get_mut(r.seq_id as usize) else {
                continue;
            };
            s.tokens.push(r.token);
            s.logprobs.push(r.logprob);
            if args.return_logits {
                s.logits.push(r.logits);
            }
            if stop.contains(&r.token) {
                s.finish = Some("stop");
            } else if s.tokens.len() >= args.max_tokens {
                s.finish = Some("length");
            }
            if s.finish.is_some() {
                finished[s.rank].push(s.id);
            }
        }
        for (rank, ids) in finished.into_iter().enumerate() {
            if !ids.is_empty() {
                group.release(rank, ids).await?;
            }
        }
    }
    let mut stats = Vec::new();
    if args.stats {
        for s in group.status().await {
            stats.push(s?.ep_stats_json);
        }
    }
    group.shutdown().await;
    Ok((seqs, stats))
}
