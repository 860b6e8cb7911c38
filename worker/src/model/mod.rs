//! MoE transformers: one decoder-only skeleton ([`Transformer`]) shared by the architectures,
//! which differ in their attention ([`Attention`] implementations) and their routers
//! ([`crate::moe::Gate`] implementations). One loader file per architecture maps the
//! published tensor names onto these parts.
//!
//! A forward pass takes a batch of sequence chunks (whole prompts, prompt pieces or single
//! decode tokens) flattened into one token matrix: every linear layer runs on all tokens at
//! once, attention runs per sequence against the block KV cache.

mod attention;
mod deepseek_v3;
mod expert_reader;
mod experts;
mod llama4;
mod qwen3_moe;

pub use attention::{Attention, GqaAttention, MlaAttention};
pub use expert_reader::ExpertReader;

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::config::{ModelConfig, ModelShape};
use crate::error::{ModelError, Result};
use crate::kv_cache::{KvCache, KvCacheConfig, SeqId};
use crate::moe::{
    token_key, ExpertSet, Gate, LayerExperts, MoeDispatch, RouteReplay, Routing, RoutingObserver,
};
use crate::nn::{Linear, RmsNorm, SwiGlu};
use crate::weights::WeightStore;

/// New tokens of one sequence in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqInput {
    pub seq: SeqId,
    pub tokens: Vec<u32>,
    /// Position of `tokens[0]`; must equal the number of tokens already cached for `seq`.
    pub start: usize,
    /// Whether these are prompt tokens (prefill) rather than generated ones (decode).
    pub prompt: bool,
}

/// Which rows of the batch get logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsMode {
    /// The last token of each sequence (what sampling needs).
    LastPerSeq,
    /// Every token (prompt scoring, reference comparisons).
    All,
}

/// The token layout of a batch: each sequence's rows and every row's position.
#[derive(Debug, Clone)]
pub struct BatchLayout {
    pub spans: Vec<(SeqId, Range<usize>, bool)>,
    pub positions: Vec<usize>,
    pub starts: Vec<usize>,
}

impl BatchLayout {
    pub fn num_tokens(&self) -> usize {
        self.positions.len()
    }
}

/// What a forward pass needs besides the model and the cache.
pub struct ForwardCtx<'a> {
    pub dispatch: &'a mut dyn MoeDispatch,
    pub observer: Option<&'a mut dyn RoutingObserver>,
}

/// Which routed experts a process loads. A worker of an expert-parallel group loads only
/// those its placement plan gives it.
pub type ExpertFilter<'a> = &'a dyn Fn(usize, u32) -> bool;

/// How to load a checkpoint.
#[derive(Clone, Copy)]
pub struct LoadOptions<'a> {
    pub dtype: DType,
    pub device: &'a Device,
    /// `None`: every expert.
    pub experts: Option<ExpertFilter<'a>>,
}

/// The feed-forward half of a decoder layer.
#[derive(Debug)]
pub enum FeedForward {
    Dense(SwiGlu),
    Moe(MoeBlock),
}

/// A MoE feed-forward block: the router and the (optional) shared expert live here; the
/// routed experts live in the model's [`ExpertSet`] and run through the [`MoeDispatch`].
#[derive(Debug)]
pub struct MoeBlock {
    pub gate: Box<dyn Gate>,
    pub shared: Option<SwiGlu>,
}

/// One pre-norm decoder layer: `x += attn(norm(x)); x += ffn(norm(x))`.
#[derive(Debug)]
pub struct DecoderLayer {
    pub input_norm: RmsNorm,
    pub attn: Box<dyn Attention>,
    pub post_norm: RmsNorm,
    pub ffn: FeedForward,
}

/// A loaded MoE model (dense weights plus the routed experts this process hosts).
#[derive(Debug)]
pub struct Transformer {
    config: ModelConfig,
    shape: ModelShape,
    embed: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    experts: ExpertSet,
    dtype: DType,
    device: Device,
    /// Benchmarking only: gates select experts from a recorded distribution.
    route_replay: Option<Arc<RouteReplay>>,
}

impl Transformer {
    /// Loads the checkpoint in `dir` (config.json plus safetensors).
    pub fn load(dir: &Path, opts: LoadOptions<'_>) -> Result<Self> {
        let config = ModelConfig::from_dir(dir)?;
        let ws = WeightStore::open(dir, opts.dtype, opts.device)?
            .with_format(crate::config::WeightFormat::from_dir(dir)?);
        let progress = crate::progress::bar(config.shape().num_layers as u64, "loading layers");
        let t = match &config {
            ModelConfig::Qwen3Moe(c) => qwen3_moe::load(c, &ws, &opts, &progress)?,
            ModelConfig::DeepseekV3(c) => deepseek_v3::load(c, &ws, &opts, &progress)?,
            ModelConfig::Llama4(c) => llama4::load(c, &ws, &opts, &progress)?,
        };
        progress.finish_and_clear();
        let parts = t;
        tracing::debug!(dir = %dir.display(), arch = %config.arch(), "model loaded");
        Ok(Self {
            shape: config.shape(),
            config,
            embed: parts.embed,
            layers: parts.layers,
            norm: parts.norm,
            lm_head: parts.lm_head,
            experts: parts.experts,
            dtype: opts.dtype,
            device: opts.device.clone(),
            route_replay: None,
        })
    }

    /// Swaps in another set of hosted experts (a committed placement switch) and returns the
    /// previous one. The caller makes sure every MoE layer is present.
    pub fn replace_experts(&mut self, experts: ExpertSet) -> ExpertSet {
        std::mem::replace(&mut self.experts, experts)
    }

    /// Benchmarking only: makes every gate select its experts as `replay` says (see
    /// [`RouteReplay`]); `None` restores the real routing.
    pub fn set_route_replay(&mut self, replay: Option<Arc<RouteReplay>>) {
        self.route_replay = replay;
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn shape(&self) -> &ModelShape {
        &self.shape
    }

    pub fn experts(&self) -> &ExpertSet {
        &self.experts
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A KV cache sized for this model with room for `num_blocks` blocks of `block_size`.
    pub fn kv_cache(&self, block_size: usize, num_blocks: usize) -> KvCache {
        KvCache::new(KvCacheConfig {
            num_layers: self.shape.num_layers,
            block_size,
            num_blocks,
            key_width: self.shape.kv_key_width,
            value_width: self.shape.kv_value_width,
        })
    }

    /// Runs `batch` through the model, appending its tokens to the KV cache. Returns logits
    /// `[rows, vocab]` in f32 for the rows `mode` selects. On error the cache is left as it
    /// was before the call.
    pub fn forward(
        &self,
        batch: &[SeqInput],
        kv: &mut KvCache,
        ctx: &mut ForwardCtx<'_>,
        mode: LogitsMode,
    ) -> Result<Tensor> {
        let layout = self.prepare(batch, kv)?;
        match self.run(batch, &layout, kv, ctx, mode) {
            Ok(logits) => {
                for ((seq, range, _), start) in layout.spans.iter().zip(&layout.starts) {
                    kv.set_len(*seq, start + range.len())?;
                }
                Ok(logits)
            }
            Err(e) => {
                // Roll back: sequences new in this batch go away, others lose what was added.
                for s in batch {
                    if s.start == 0 {
                        kv.free(s.seq);
                    } else {
                        kv.truncate(s.seq, s.start);
                    }
                }
                Err(e)
            }
        }
    }

    /// Validates the batch and reserves cache blocks for all of it (all or nothing).
    fn prepare(&self, batch: &[SeqInput], kv: &mut KvCache) -> Result<BatchLayout> {
        let mut spans = Vec::with_capacity(batch.len());
        let mut positions = Vec::new();
        let mut starts = Vec::with_capacity(batch.len());
        let max_pos = self.shape.max_position_embeddings;
        for (i, s) in batch.iter().enumerate() {
            if s.tokens.is_empty() {
                return Err(ModelError::Input(format!("sequence {}: no tokens", s.seq)));
            }
            if batch[..i].iter().any(|o| o.seq == s.seq) {
                return Err(ModelError::Input(format!(
                    "sequence {} appears twice in one batch",
                    s.seq
                )));
            }
            if let Some(&bad) = s
                .tokens
                .iter()
                .find(|&&t| t as usize >= self.shape.vocab_size)
            {
                return Err(ModelError::Input(format!(
                    "sequence {}: token id {bad} is out of range (vocab_size {})",
                    s.seq, self.shape.vocab_size
                )));
            }
            if s.start + s.tokens.len() > max_pos {
                return Err(ModelError::Input(format!(
                    "sequence {}: {} tokens exceed max_position_embeddings {max_pos}",
                    s.seq,
                    s.start + s.tokens.len()
                )));
            }
            kv.check_start(s.seq, s.start)?;
            let r = positions.len()..positions.len() + s.tokens.len();
            positions.extend(s.start..s.start + s.tokens.len());
            spans.push((s.seq, r, s.prompt));
            starts.push(s.start);
        }
        let total_needed: usize = batch
            .iter()
            .map(|s| kv.blocks_needed(s.seq, s.start + s.tokens.len()))
            .sum();
        if total_needed > kv.free_blocks() {
            let s = &batch[0];
            return Err(crate::kv_cache::KvError::OutOfBlocks {
                seq: s.seq,
                needed: total_needed,
                free: kv.free_blocks(),
            }
            .into());
        }
        for s in batch {
            kv.reserve(s.seq, s.start + s.tokens.len())?;
        }
        Ok(BatchLayout {
            spans,
            positions,
            starts,
        })
    }

    fn run(
        &self,
        batch: &[SeqInput],
        layout: &BatchLayout,
        kv: &mut KvCache,
        ctx: &mut ForwardCtx<'_>,
        mode: LogitsMode,
    ) -> Result<Tensor> {
        let t = layout.num_tokens();
        let h = self.shape.hidden_size;
        if t == 0 {
            // Nothing to compute, but collective dispatchers still expect this rank at every
            // MoE layer.
            let x = Tensor::zeros((0, h), self.dtype, &self.device)?;
            for (l, layer) in self.layers.iter().enumerate() {
                if let FeedForward::Moe(block) = &layer.ffn {
                    let routing = Routing {
                        top_k: block.gate.top_k(),
                        ids: Vec::new(),
                        weights: Vec::new(),
                        apply: block.gate.weight_application(),
                    };
                    ctx.dispatch
                        .routed(l, &x, &routing, self.layer_experts(l)?)?;
                }
            }
            return Ok(Tensor::zeros(
                (0, self.shape.vocab_size),
                DType::F32,
                &self.device,
            )?);
        }
        let ids: Vec<u32> = batch
            .iter()
            .flat_map(|s| s.tokens.iter().copied())
            .collect();
        let replay_keys: Vec<u64> = match &self.route_replay {
            Some(_) => ids
                .iter()
                .zip(&layout.positions)
                .map(|(&tok, &pos)| token_key(tok, pos))
                .collect(),
            None => Vec::new(),
        };
        let ids = Tensor::from_vec(ids, t, &self.device)?;
        let mut x = self.embed.index_select(&ids, 0)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let a = layer
                .attn
                .forward(l, &layer.input_norm.forward(&x)?, layout, kv)?;
            x = (x + a)?;
            let hn = layer.post_norm.forward(&x)?;
            let f = match &layer.ffn {
                FeedForward::Dense(mlp) => mlp.forward(&hn)?,
                FeedForward::Moe(block) => {
                    let mut routing = block.gate.route(&hn)?;
                    if let Some(replay) = &self.route_replay {
                        routing = replay.rewrite(l, &routing, &replay_keys);
                    }
                    if let Some(obs) = ctx.observer.as_deref_mut() {
                        obs.observe(l, &layout.spans, &routing);
                    }
                    let routed = ctx
                        .dispatch
                        .routed(l, &hn, &routing, self.layer_experts(l)?)?;
                    match &block.shared {
                        Some(shared) => (shared.forward(&hn)? + routed)?,
                        None => routed,
                    }
                }
            };
            x = (x + f)?;
        }
        let x = match mode {
            LogitsMode::All => x,
            LogitsMode::LastPerSeq => {
                let last: Vec<u32> = layout
                    .spans
                    .iter()
                    .map(|(_, r, _)| (r.end - 1) as u32)
                    .collect();
                let n = last.len();
                x.index_select(&Tensor::from_vec(last, n, &self.device)?, 0)?
            }
        };
        let logits = self.lm_head.forward(&self.norm.forward(&x)?)?;
        Ok(logits.to_dtype(DType::F32)?)
    }

    fn layer_experts(&self, layer: usize) -> Result<&LayerExperts> {
        self.experts
            .layer(layer)
            .ok_or_else(|| ModelError::Input(format!("layer {layer} has no expert set")))
    }
}

/// What an architecture's loader produces.
pub(crate) struct Parts {
    pub embed: Tensor,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    pub lm_head: Linear,
    pub experts: ExpertSet,
}

/// Loads `{prefix}embed_tokens.weight` and the LM head `head_name` (the embedding itself when
/// the config ties them).
pub(crate) fn load_embed_head(
    ws: &WeightStore,
    prefix: &str,
    head_name: &str,
    vocab: usize,
    hidden: usize,
    tied: bool,
) -> Result<(Tensor, Linear)> {
    let embed = ws.get(&format!("{prefix}embed_tokens.weight"), &[vocab, hidden])?;
    let head = if tied {
        Linear::from_weight(embed.clone())
    } else {
        Linear::from_weight(ws.get(head_name, &[vocab, hidden])?)
    };
    Ok((embed, head))
}

/// Loads the routed experts of one layer that pass `opts.experts`, with `load_one` reading
/// expert `e`.
pub(crate) fn load_layer_experts(
    layer: usize,
    num_experts: usize,
    hidden: usize,
    opts: &LoadOptions<'_>,
    mut load_one: impl FnMut(u32) -> Result<SwiGlu>,
) -> Result<LayerExperts> {
    let mut set = LayerExperts::new(layer, num_experts, hidden);
    for e in 0..num_experts as u32 {
        if opts.experts.is_none_or(|f| f(layer, e)) {
            set.insert(e, load_one(e)?);
        }
    }
    Ok(set)
}
