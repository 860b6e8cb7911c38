//! Loads `deepseek_v3` checkpoints (`DeepseekV3ForCausalLM` tensor names; also Kimi-K2).

use indicatif::ProgressBar;

use super::attention::mla::QueryProj;
use super::experts::{load_expert, FusedLayout};
use super::{
    load_embed_head, load_layer_experts, DecoderLayer, FeedForward, LoadOptions, MlaAttention,
    MoeBlock, Parts,
};
use crate::config::DeepseekV3Config;
use crate::error::Result;
use crate::moe::gate::GroupLimitedParams;
use crate::moe::{ExpertSet, GroupLimitedSigmoidGate};
use crate::nn::rope::{Rope, RopeStyle};
use crate::nn::{Linear, RmsNorm, SwiGlu};
use crate::weights::WeightStore;

/// The reference normalises the low-rank query and latent with a fixed epsilon, not the
/// config's `rms_norm_eps`.
const LORA_NORM_EPS: f64 = 1e-6;

pub(crate) fn load(
    c: &DeepseekV3Config,
    ws: &WeightStore,
    opts: &LoadOptions<'_>,
    progress: &ProgressBar,
) -> Result<Parts> {
    let h = c.hidden_size;
    let nh = c.num_attention_heads;
    let qk = c.qk_head_dim();
    let eps = c.rms_norm_eps;
    let (embed, lm_head) = load_embed_head(
        ws,
        "model.",
        "lm_head.weight",
        c.vocab_size,
        h,
        c.tie_word_embeddings,
    )?;
    let style = if c.rope_interleave {
        RopeStyle::Interleaved
    } else {
        RopeStyle::Half
    };
    let rope = Rope::new(&c.rope, c.qk_rope_head_dim, style);
    let scale = ((qk as f64).powf(-0.5) * c.rope.yarn_softmax_scale()) as f32;
    let mut layers = Vec::with_capacity(c.num_hidden_layers);
    let mut experts = ExpertSet::default();
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let a = format!("{p}.self_attn");
        let q = match c.q_lora_rank {
            Some(r) => QueryProj::LowRank {
                a: Linear::load(ws, &format!("{a}.q_a_proj"), r, h)?,
                norm: RmsNorm::load(ws, &format!("{a}.q_a_layernorm"), r, LORA_NORM_EPS)?,
                b: Linear::load(ws, &format!("{a}.q_b_proj"), nh * qk, r)?,
            },
            None => QueryProj::Full(Linear::load(ws, &format!("{a}.q_proj"), nh * qk, h)?),
        };
        let attn = MlaAttention {
            q,
            kv_a: Linear::load(
                ws,
                &format!("{a}.kv_a_proj_with_mqa"),
                c.kv_lora_rank + c.qk_rope_head_dim,
                h,
            )?,
            kv_a_norm: RmsNorm::load(
                ws,
                &format!("{a}.kv_a_layernorm"),
                c.kv_lora_rank,
                LORA_NORM_EPS,
            )?,
            kv_b: Linear::load(
                ws,
                &format!("{a}.kv_b_proj"),
                nh * (c.qk_nope_head_dim + c.v_head_dim),
                c.kv_lora_rank,
            )?,
            o_proj: Linear::load(ws, &format!("{a}.o_proj"), h, nh * c.v_head_dim)?,
            num_heads: nh,
            nope_dim: c.qk_nope_head_dim,
            rope_dim: c.qk_rope_head_dim,
            v_dim: c.v_head_dim,
            kv_lora_rank: c.kv_lora_rank,
            rope: rope.clone(),
            scale,
        };
        let ffn = if c.is_moe_layer(l) {
            let gate = GroupLimitedSigmoidGate::load(
                ws,
                &format!("{p}.mlp.gate"),
                GroupLimitedParams {
                    num_experts: c.n_routed_experts,
                    hidden: h,
                    top_k: c.num_experts_per_tok,
                    n_group: c.n_group,
                    topk_group: c.topk_group,
                    norm_topk_prob: c.norm_topk_prob,
                    routed_scaling_factor: c.routed_scaling_factor,
                },
            )?;
            let layer_experts = load_layer_experts(l, c.n_routed_experts, h, opts, |e| {
                load_expert(
                    ws,
                    &format!("{p}.mlp.experts"),
                    e,
                    c.n_routed_experts,
                    h,
                    c.moe_intermediate_size,
                    FusedLayout::OutputMajor,
                )
            })?;
            experts.insert_layer(layer_experts);
            let shared = if c.n_shared_experts > 0 {
                Some(SwiGlu::load_split(
                    ws,
                    &format!("{p}.mlp.shared_experts"),
                    h,
                    c.moe_intermediate_size * c.n_shared_experts,
                )?)
            } else {
                None
            };
            FeedForward::Moe(MoeBlock {
                gate: Box::new(gate),
                shared,
            })
        } else {
            FeedForward::Dense(SwiGlu::load_split(
                ws,
                &format!("{p}.mlp"),
                h,
                c.intermediate_size,
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
        norm: RmsNorm::load(ws, "model.norm", h, eps)?,
        lm_head,
        experts,
    })
}
