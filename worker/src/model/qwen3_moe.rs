//! Loads `qwen3_moe` checkpoints (`Qwen3MoeForCausalLM` tensor names).

use indicatif::ProgressBar;

use super::experts::FusedLayout;
use super::{
    load_embed_head, load_layer_experts, DecoderLayer, FeedForward, GqaAttention, LoadOptions,
    MoeBlock, Parts,
};
use crate::config::Qwen3MoeConfig;
use crate::error::Result;
use crate::model::attention::QkNorm;
use crate::moe::{ExpertSet, SoftmaxTopKGate};
use crate::nn::attention::AttnMask;
use crate::nn::rope::{Rope, RopeStyle};
use crate::nn::{Linear, RmsNorm};
use crate::weights::WeightStore;

pub(crate) fn load(
    c: &Qwen3MoeConfig,
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
    let (embed, lm_head) = load_embed_head(
        ws,
        "model.",
        "lm_head.weight",
        c.vocab_size,
        h,
        c.tie_word_embeddings,
    )?;
    let rope = Rope::new(&c.rope, hd, RopeStyle::Half);
    let mut layers = Vec::with_capacity(c.num_hidden_layers);
    let mut experts = ExpertSet::default();
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let attn = GqaAttention {
            q_proj: Linear::load(ws, &format!("{p}.self_attn.q_proj"), nh * hd, h)?,
            k_proj: Linear::load(ws, &format!("{p}.self_attn.k_proj"), nkv * hd, h)?,
            v_proj: Linear::load(ws, &format!("{p}.self_attn.v_proj"), nkv * hd, h)?,
            o_proj: Linear::load(ws, &format!("{p}.self_attn.o_proj"), h, nh * hd)?,
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: hd,
            qk_norm: QkNorm::RmsBeforeRope {
                q: RmsNorm::load(ws, &format!("{p}.self_attn.q_norm"), hd, c.rms_norm_eps)?,
                k: RmsNorm::load(ws, &format!("{p}.self_attn.k_norm"), hd, c.rms_norm_eps)?,
            },
            rope: Some(rope.clone()),
            mask: AttnMask::Causal,
            temperature: None,
        };
        let ffn = if c.is_moe_layer(l) {
            let gate = SoftmaxTopKGate::load(
                ws,
                &format!("{p}.mlp.gate.weight"),
                c.num_experts,
                h,
                c.num_experts_per_tok,
                c.norm_topk_prob,
            )?;
            let layer_experts = load_layer_experts(l, c.num_experts, h, opts, |e| {
                super::experts::load_expert(
                    ws,
                    &format!("{p}.mlp.experts"),
                    e,
                    c.num_experts,
                    h,
                    c.moe_intermediate_size,
                    FusedLayout::OutputMajor,
                )
            })?;
            experts.insert_layer(layer_experts);
            FeedForward::Moe(MoeBlock {
                gate: Box::new(gate),
                shared: None,
            })
        } else {
            FeedForward::Dense(crate::nn::SwiGlu::load_split(
                ws,
                &format!("{p}.mlp"),
                h,
                c.intermediate_size,
            )?)
        };
        layers.push(DecoderLayer {
            input_norm: RmsNorm::load(ws, &format!("{p}.input_layernorm"), h, c.rms_norm_eps)?,
            attn: Box::new(attn),
            post_norm: RmsNorm::load(
                ws,
                &format!("{p}.post_attention_layernorm"),
                h,
                c.rms_norm_eps,
            )?,
            ffn,
        });
        progress.inc(1);
    }
    Ok(Parts {
        embed,
        layers,
        norm: RmsNorm::load(ws, "model.norm", h, c.rms_norm_eps)?,
        lm_head,
        experts,
    })
}
