//! Batched generation in one process: prefill every prompt in one forward pass, then decode
//! all unfinished sequences together, one token each per step. The CLI's `generate` and the
//! benchmarks use it; the router's continuous batching drives the same model steps.

use std::time::{Duration, Instant};

use moeflow_api::{FinishReason, SamplingParams};

use crate::error::{ModelError, Result};
use crate::kv_cache::SeqId;
use crate::model::{ForwardCtx, LogitsMode, SeqInput, Transformer};
use crate::moe::{LocalDispatch, RoutingObserver};
use crate::sampling::Sampler;

/// One prompt to complete.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Token ids that end the completion (included in the output, like transformers does).
    pub stop_tokens: Vec<u32>,
}

/// A finished completion.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub logprobs: Vec<f32>,
    pub finish_reason: FinishReason,
}

/// Wall-clock split of a generation run.
#[derive(Debug, Clone, Copy, Default)]
pub struct GenerationTiming {
    pub prefill: Duration,
    pub decode: Duration,
    pub decode_steps: usize,
}

/// Tokens per KV block used by single-process generation.
pub const BLOCK_SIZE: usize = 16;

/// Completes every request; returns the completions in request order.
pub fn generate(
    model: &Transformer,
    requests: &[GenerationRequest],
    mut observer: Option<&mut dyn RoutingObserver>,
) -> Result<(Vec<Generation>, GenerationTiming)> {
    for (i, r) in requests.iter().enumerate() {
        if r.prompt.is_empty() {
            return Err(ModelError::Input(format!("request {i}: empty prompt")));
        }
        r.sampling
            .validate()
            .map_err(|e| ModelError::Input(format!("request {i}: {e}")))?;
    }
    let blocks: usize = requests
        .iter()
        .map(|r| (r.prompt.len() + r.max_tokens).div_ceil(BLOCK_SIZE))
        .sum();
    let mut kv = model.kv_cache(BLOCK_SIZE, blocks);
    let mut dispatch = LocalDispatch;
    let mut samplers: Vec<Sampler> = requests
        .iter()
        .map(|r| Sampler::new(r.sampling.clone()))
        .collect();
    let mut out: Vec<Generation> = requests
        .iter()
        .map(|_| Generation {
            tokens: Vec::new(),
            logprobs: Vec::new(),
            finish_reason: FinishReason::Length,
        })
        .collect();
    let mut done: Vec<bool> = requests.iter().map(|r| r.max_tokens == 0).collect();
    let mut timing = GenerationTiming::default();

    let mut batch: Vec<SeqInput> = requests
        .iter()
        .enumerate()
        .filter(|(i, _)| !done[*i])
        .map(|(i, r)| SeqInput {
            seq: i as SeqId,
            tokens: r.prompt.clone(),
            start: 0,
            prompt: true,
        })
        .collect();
    let mut first = true;
    while !batch.is_empty() {
        let t0 = Instant::now();
        let logits = {
            let mut ctx = ForwardCtx {
                dispatch: &mut dispatch,
                observer: match observer.as_mut() {
                    Some(o) => Some(&mut **o as &mut dyn RoutingObserver),
                    None => None,
                },
            };
            model.forward(&batch, &mut kv, &mut ctx, LogitsMode::LastPerSeq)?
        };
        let rows = logits.to_vec2::<f32>()?;
        let mut next = Vec::with_capacity(batch.len());
        for (s, row) in batch.iter().zip(rows) {
            let i = s.seq as usize;
            let sample = samplers[i].sample(&row);
            let g = &mut out[i];
            g.tokens.push(sample.token);
            g.logprobs.push(sample.logprob);
            let r = &requests[i];
            if r.stop_tokens.contains(&sample.token) {
                g.finish_reason = FinishReason::Stop;
                done[i] = true;
            } else if g.tokens.len() >= r.max_tokens {
                done[i] = true;
            }
            if done[i] {
                kv.free(s.seq);
            } else {
                next.push(SeqInput {
                    seq: s.seq,
                    tokens: vec![sample.token],
                    start: s.start + s.tokens.len(),
                    prompt: false,
                });
            }
        }
        if first {
            timing.prefill = t0.elapsed();
            first = false;
        } else {
            timing.decode += t0.elapsed();
            timing.decode_steps += 1;
        }
        batch = next;
    }
    Ok((out, timing))
}
