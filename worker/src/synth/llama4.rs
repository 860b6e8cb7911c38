//! Llama-4 text checkpoints (`Llama4ForCausalLM`, config `model_type` `llama4_text` as
//! transformers' `Llama4TextConfig` writes it; the published Scout/Maverick repositories nest
//! the same fields under `text_config` of a multimodal config). MoE layers hold the experts
//! fused, as published: `experts.gate_up_proj` `[E, H, 2F]` (gate in the first F columns) and
//! `experts.down_proj` `[E, F, H]`, plus a shared expert; every fourth layer skips RoPE.

use serde_json::json;

use super::tensors::{fused_experts, linear, norm, TensorSpec};
use super::{ModelSpec, Preset, Vocab};

/// The dimensions of a generated Llama-4 text model (config.json field names).
#[derive(Debug, Clone, PartialEq)]
pub struct Llama4Dims {
    /// Rows of the embedding and LM head.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA).
    pub num_key_value_heads: usize,
    /// Per-head dimension.
    pub head_dim: usize,
    /// Routed experts per MoE layer.
    pub num_local_experts: usize,
    /// Experts selected per token.
    pub num_experts_per_tok: usize,
    /// Hidden size of each expert's FFN and of the shared expert.
    pub intermediate_size: usize,
    /// Hidden size of the dense layers' FFN.
    pub intermediate_size_mlp: usize,
    /// Layer `i` is MoE when `(i + 1) % interleave_moe_layer_step == 0`.
    pub interleave_moe_layer_step: usize,
    /// Every this-many-th layer is NoPE (no rotary embedding, global attention).
    pub no_rope_layer_interval: usize,
    /// Window of chunked (local) attention on RoPE layers.
    pub attention_chunk_size: usize,
    /// Position scale of attention temperature tuning on NoPE layers.
    pub floor_scale: usize,
    /// Context length.
    pub max_position_embeddings: usize,
    /// Llama-3 RoPE scaling factor.
    pub rope_factor: f64,
    /// Context length the rotary frequencies were trained for.
    pub original_max_position_embeddings: usize,
}

impl Llama4Dims {
    /// The dimensions of a preset, for a tokenizer of `tokenizer_vocab` ids.
    ///
    /// - tiny: hidden 64, 4 layers (layers 1 and 3 MoE; layer 3 NoPE), 8 experts top-1 of FFN
    ///   32, dense FFN 96, 4 query / 2 KV heads of dim 16, attention chunks of 64,
    ///   `floor_scale` 16 (so that temperature tuning shows within short prompts; published
    ///   8192), Llama-3 RoPE scaling factor 8 over 256, context 2048.
    /// - bench (Maverick-like): hidden 512, 8 layers (every other one MoE), 32 experts top-1
    ///   of FFN 512, dense FFN 1024, 8 query / 4 KV heads of dim 64, chunks of 1024,
    ///   `floor_scale` 8192, scaling factor 8 over 1024, vocab 32000, context 4096 (about
    ///   149M parameters).
    pub fn for_preset(preset: Preset, tokenizer_vocab: usize) -> Self {
        match preset {
            Preset::Tiny => Self {
                vocab_size: tokenizer_vocab.div_ceil(64) * 64,
                hidden_size: 64,
                num_hidden_layers: 4,
                num_attention_heads: 4,
                num_key_value_heads: 2,
                head_dim: 16,
                num_local_experts: 8,
                num_experts_per_tok: 1,
                intermediate_size: 32,
                intermediate_size_mlp: 96,
                interleave_moe_layer_step: 2,
                no_rope_layer_interval: 4,
                attention_chunk_size: 64,
                floor_scale: 16,
                max_position_embeddings: 2048,
                rope_factor: 8.0,
                original_max_position_embeddings: 256,
            },
            Preset::Bench => Self {
                vocab_size: 32000.max(tokenizer_vocab.div_ceil(64) * 64),
                hidden_size: 512,
                num_hidden_layers: 8,
                num_attention_heads: 8,
                num_key_value_heads: 4,
                head_dim: 64,
                num_local_experts: 32,
                num_experts_per_tok: 1,
                intermediate_size: 512,
                intermediate_size_mlp: 1024,
                interleave_moe_layer_step: 2,
                no_rope_layer_interval: 4,
                attention_chunk_size: 1024,
                floor_scale: 8192,
                max_position_embeddings: 4096,
                rope_factor: 8.0,
                original_max_position_embeddings: 1024,
            },
        }
    }

    /// Whether layer `i` has a MoE block.
    pub fn is_moe(&self, i: usize) -> bool {
        (i + 1).is_multiple_of(self.interleave_moe_layer_step.max(1))
    }

    /// `no_rope_layers` as transformers derives it: 1 where the layer uses RoPE.
    pub fn no_rope_layers(&self) -> Vec<u8> {
        (0..self.num_hidden_layers)
            .map(|i| u8::from((i + 1) % self.no_rope_layer_interval.max(1) != 0))
            .collect()
    }

    /// The checkpoint: config.json and tensor list.
    pub fn spec(&self, vocab: &Vocab) -> ModelSpec {
        ModelSpec {
            config: self.config(vocab),
            tensors: self.tensors(),
            max_position_embeddings: self.max_position_embeddings,
        }
    }

    fn config(&self, vocab: &Vocab) -> serde_json::Value {
        let moe_layers: Vec<usize> = (0..self.num_hidden_layers)
            .filter(|&i| self.is_moe(i))
            .collect();
        // Derived lists that transformers' Llama4TextConfig writes: RoPE layers attend within
        // chunks, NoPE layers globally.
        let layer_types: Vec<&str> = self
            .no_rope_layers()
            .iter()
            .map(|&rope| {
                if rope == 1 {
                    "chunked_attention"
                } else {
                    "full_attention"
                }
            })
            .collect();
        json!({
            "architectures": ["Llama4ForCausalLM"],
            "attention_bias": false,
            "attention_chunk_size": self.attention_chunk_size,
            "attention_dropout": 0.0,
            "attn_scale": 0.1,
            "attn_temperature_tuning": true,
            "bos_token_id": vocab.bos_token_id,
            "eos_token_id": vocab.eos_token_id,
            "floor_scale": self.floor_scale,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "initializer_range": 0.02,
            "interleave_moe_layer_step": self.interleave_moe_layer_step,
            "intermediate_size": self.intermediate_size,
            "intermediate_size_mlp": self.intermediate_size_mlp,
            "layer_types": layer_types,
            "max_position_embeddings": self.max_position_embeddings,
            "model_type": "llama4_text",
            "moe_layers": moe_layers,
            "no_rope_layers": self.no_rope_layers(),
            "num_attention_heads": self.num_attention_heads,
            "num_experts_per_tok": self.num_experts_per_tok,
            "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_key_value_heads,
            "num_local_experts": self.num_local_experts,
            "output_router_logits": false,
            "pad_token_id": vocab.pad_token_id,
            "rms_norm_eps": 1e-5,
            "rope_scaling": {
                "factor": self.rope_factor,
                "high_freq_factor": 4.0,
                "low_freq_factor": 1.0,
                "original_max_position_embeddings": self.original_max_position_embeddings,
                "rope_type": "llama3",
            },
            "rope_theta": 500_000.0,
            "router_aux_loss_coef": 0.001,
            "router_jitter_noise": 0.0,
            "tie_word_embeddings": false,
            "torch_dtype": "float32",
            "use_cache": true,
            "use_qk_norm": true,
            "vocab_size": self.vocab_size,
        })
    }

    fn tensors(&self) -> Vec<TensorSpec> {
        let (h, hd) = (self.hidden_size, self.head_dim);
        let (nh, nkv) = (self.num_attention_heads, self.num_key_value_heads);
        let mut t = vec![linear("model.embed_tokens.weight", self.vocab_size, h)];
        for i in 0..self.num_hidden_layers {
            let p = format!("model.layers.{i}");
            t.push(norm(format!("{p}.input_layernorm.weight"), h));
            t.push(norm(format!("{p}.post_attention_layernorm.weight"), h));
            t.push(linear(format!("{p}.self_attn.q_proj.weight"), nh * hd, h));
            t.push(linear(format!("{p}.self_attn.k_proj.weight"), nkv * hd, h));
            t.push(linear(format!("{p}.self_attn.v_proj.weight"), nkv * hd, h));
            t.push(linear(format!("{p}.self_attn.o_proj.weight"), h, nh * hd));
            let ff = format!("{p}.feed_forward");
            if self.is_moe(i) {
                let (e, f) = (self.num_local_experts, self.intermediate_size);
                t.push(linear(format!("{ff}.router.weight"), e, h));
                t.push(fused_experts(
                    format!("{ff}.experts.gate_up_proj"),
                    e,
                    h,
                    2 * f,
                ));
                t.push(fused_experts(format!("{ff}.experts.down_proj"), e, f, h));
                t.push(linear(format!("{ff}.shared_expert.gate_proj.weight"), f, h));
                t.push(linear(format!("{ff}.shared_expert.up_proj.weight"), f, h));
                t.push(linear(format!("{ff}.shared_expert.down_proj.weight"), h, f));
            } else {
                let f = self.intermediate_size_mlp;
                t.push(linear(format!("{ff}.gate_proj.weight"), f, h));
                t.push(linear(format!("{ff}.up_proj.weight"), f, h));
                t.push(linear(format!("{ff}.down_proj.weight"), h, f));
            }
        }
        t.push(norm("model.norm.weight", h));
        t.push(linear("lm_head.weight", self.vocab_size, h));
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_pattern_matches_transformers() {
        let d = Llama4Dims::for_preset(Preset::Tiny, 1024);
        assert_eq!(d.no_rope_layers(), [1, 1, 1, 0]);
        let moe: Vec<bool> = (0..4).map(|i| d.is_moe(i)).collect();
        assert_eq!(moe, [false, true, false, true]);
    }

    #[test]
    fn bench_preset_is_comparable_to_the_qwen_one() {
        let d = Llama4Dims::for_preset(Preset::Bench, 4000);
        let params: usize = d.tensors().iter().map(TensorSpec::numel).sum();
        assert!((140_000_000..155_000_000).contains(&params), "{params}");
    }
}
