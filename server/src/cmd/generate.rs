//! `moeflow generate`: one completion in this process, for checking a checkpoint and for
//! reference outputs that the distributed paths must reproduce.

use std::path::PathBuf;

use anyhow::{bail, Context};
use moeflow_api::SamplingParams;
use moeflow_tokenizer::Tokenizer;
use moeflow_worker::generate::{generate, GenerationRequest};
use moeflow_worker::model::{LoadOptions, Transformer};

use super::device::DeviceArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Checkpoint directory (Hugging Face layout).
    #[arg(long)]
    model: PathBuf,
    /// Prompt text (tokenized with the checkpoint's tokenizer.json).
    #[arg(
        long,
        conflicts_with = "prompt_ids",
        required_unless_present = "prompt_ids"
    )]
    prompt: Option<String>,
    /// Prompt as comma-separated token ids.
    #[arg(long, value_delimiter = ',')]
    prompt_ids: Option<Vec<u32>>,
    #[arg(long, default_value_t = 32)]
    max_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// 0 disables top-k.
    #[arg(long, default_value_t = 0)]
    top_k: u32,
    #[arg(long)]
    seed: Option<u64>,
    /// Keep generating past end-of-sequence tokens (benchmarks).
    #[arg(long)]
    ignore_eos: bool,
    /// Print one JSON object (token ids, log-probabilities, text) instead of the text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let (device, dtype) = args.device.resolve()?;
    let tokenizer = if args.model.join("tokenizer.json").exists() {
        Some(Tokenizer::from_dir(&args.model)?)
    } else {
        None
    };
    let prompt: Vec<u32> = match (&args.prompt, &args.prompt_ids) {
        (Some(text), _) => match &tokenizer {
            Some(t) => t.encode(text)?,
            None => bail!(
                "{}: no tokenizer.json; pass --prompt-ids instead of --prompt",
                args.model.display()
            ),
        },
        (None, Some(ids)) => ids.clone(),
        (None, None) => bail!("one of --prompt or --prompt-ids is required"),
    };
    if prompt.is_empty() {
        bail!("the prompt is empty");
    }
    let sampling = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        seed: args.seed,
        top_logprobs: 0,
    };
    sampling.validate().map_err(anyhow::Error::msg)?;
    let model = Transformer::load(
        &args.model,
        LoadOptions {
            dtype,
            device: &device,
            experts: None,
        },
    )
    .with_context(|| format!("loading {}", args.model.display()))?;
    let stop_tokens = match (&tokenizer, args.ignore_eos) {
        (Some(t), false) => t.eos_token_ids().to_vec(),
        _ => Vec::new(),
    };
    let req = GenerationRequest {
        prompt: prompt.clone(),
        max_tokens: args.max_tokens,
        sampling,
        stop_tokens,
    };
    let (mut gens, timing) = generate(&model, std::slice::from_ref(&req), None)?;
    let g = gens.pop().context("no generation returned")?;
    let text = match &tokenizer {
        Some(t) => Some(t.decode(&g.tokens)?),
        None => None,
    };
    if args.json {
        let v = serde_json::json!({
            "prompt_token_ids": prompt,
            "token_ids": g.tokens,
            "logprobs": g.logprobs,
            "text": text,
            "finish_reason": g.finish_reason,
            "prefill_seconds": timing.prefill.as_secs_f64(),
            "decode_seconds": timing.decode.as_secs_f64(),
        });
        println!("{v}");
    } else {
        match text {
            Some(t) => println!("{t}"),
            None => println!(
                "{}",
                g.tokens
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }
    Ok(())
}
