//! Loads `llama4` text checkpoints: `Llama4ForCausalLM` names (`model.layers...`) or the
//! multimodal `Llama4ForConditionalGeneration` names (`language_model.model.layers...`).

use indicatif::ProgressBar;

use super::attention::QkNorm;
use super::experts::{load_expert, FusedLayout};
use super::{
    load_embed_head, load_layer_experts, DecoderLayer, FeedForward, GqaAttention, LoadOptions,
    MoeBlock, Parts,
};
use crate::config::Llama4Config;
use crate::error::Result;
use crate::moe::{ExpertSet, TopKSigmoidInputGate};
use crate::nn::attention::AttnMask;
use crate::nn::rope::{Rope, RopeStyle};
use crate::nn::{Linear, RmsNorm, SwiGlu};
use crate::weights::WeightStore;

pub(crate) fn load(
    c: &Llama4Config,
    ws: &WeightStore,
    opts: &LoadOptions<'_>,
    progress: &ProgressBar,
) -> Result<Parts> {
    let (h, hd, nh, nkv) = (
        c.hidden_size,
        c.head_dim,
        c.num_attention_heads,
        c.num_key_value_heads,
    );
    let eps = c.rms_norm_eps;
    let (model, head) = if ws.contains("language_model.model.embed_tokens.weight") {
        ("language_model.model.", "language_model.lm_head.weight")
    } else {
        ("model.", "lm_head.weight")
    };
    let (embed, lm_head) =
        load_embed_head(ws, model, head, c.vocab_size, h, c.tie_word_embeddings)?;
    let rope = Rope::new(&c.rope, hd, RopeStyle::Interleaved);
    let mut layers = Vec::with_capacity(c.num_hidden_layers);
    let mut experts = ExpertSet::default();
    for l in 0..c.num_hidden_layers {
        let p = format!("{model}layers.{l}");
        let use_rope = c.use_rope[l];
        let attn = GqaAttention {
            q_proj: Linear::load(ws, &format!("{p}.self_attn.q_proj"), nh * hd, h)?,
            k_proj: Linear::load(ws, &format!("{p}.self_attn.k_proj"), nkv * hd, h)?,
            v_proj: Linear::load(ws, &format!("{p}.self_attn.v_proj"), nkv * hd, h)?,
            o_proj: Linear::load(ws, &format!("{p}.self_attn.o_proj"), h, nh * hd)?,
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: hd,
            qk_norm: if c.use_qk_norm && use_rope {
                QkNorm::L2AfterRope { eps: eps as f32 }
            } else {
                QkNorm::None
            },
            rope: use_rope.then(|| rope.clone()),
            // Rope layers attend within their chunk; NoPE layers see the whole context.
            mask: match (use_rope, c.attention_chunk_size) {
                (true, Some(chunk)) => AttnMask::Chunked(chunk),
                _ => AttnMask::Causal,
            },
            temperature: (c.attn_temperature_tuning && !use_rope)
                .then_some((c.floor_scale as f32, c.attn_scale as f32)),
        };
        let ffn = if c.is_moe_layer(l) {
            let f = format!("{p}.feed_forward");
            let gate = TopKSigmoidInputGate::load(
                ws,
                &format!("{f}.router.weight"),
                c.num_local_experts,
                h,
                c.num_experts_per_tok,
            )?;
            let layer_experts = load_layer_experts(l, c.num_local_experts, h, opts, |e| {
                load_expert(
                    ws,
                    &format!("{f}.experts"),
                    e,
                    c.num_local_experts,
                    h,
                    c.intermediate_size,
                    FusedLayout::InputMajor,
                )
            })?;
            experts.insert_layer(layer_experts);
            FeedForward::Moe(MoeBlock {
                gate: Box::new(gate),
                shared: Some(SwiGlu::load_split(
                    ws,
                    &format!("{f}.shared_expert"),
                    h,
                    c.intermediate_size,
                )?),
            })
        } else {
            FeedForward::Dense(SwiGlu::load_split(
                ws,
                &format!("{p}.feed_forward"),
                h,
                c.intermediate_size_mlp,
            )?)
        };
        layers.push(DecoderLayer {
            input_norm: RmsNorm::load(ws, &format!("{p}.input_layernorm"), h, eps)?,
            attn: Box::new(attn),
            post_norm: RmsNorm::load(ws, &format!("{p}.post_attention_layernorm"), h, eps)?,
            ffn,
        });
        progress.inc(1);
    }
    Ok(Parts {
        embed,
        layers,
        norm: RmsNorm::load(ws, &format!("{model}norm"), h, eps)?,
        lm_head,
        experts,
    })
}
