//! Qwen3-MoE checkpoints (`Qwen3MoeForCausalLM`), laid out as Qwen/Qwen3-30B-A3B publishes
//! them: per-expert `mlp.experts.{e}.{gate,up,down}_proj.weight`, per-head q/k RMSNorm.

use serde_json::json;

use super::tensors::{linear, norm, TensorSpec};
use super::{ModelSpec, Preset, Vocab};

/// The dimensions of a generated Qwen3-MoE model (config.json field names).
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen3MoeDims {
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
    /// Per-head dimension (not necessarily hidden / heads in Qwen3).
    pub head_dim: usize,
    /// Routed experts per MoE layer.
    pub num_experts: usize,
    /// Experts selected per token.
    pub num_experts_per_tok: usize,
    /// Hidden size of each expert's FFN.
    pub moe_intermediate_size: usize,
    /// Hidden size of dense layers' FFN (layers in `mlp_only_layers`).
    pub intermediate_size: usize,
    /// A layer is MoE when `(i + 1) % decoder_sparse_step == 0` and not in `mlp_only_layers`.
    pub decoder_sparse_step: usize,
    /// Layers forced to a dense FFN.
    pub mlp_only_layers: Vec<usize>,
    /// Context length.
    pub max_position_embeddings: usize,
}

impl Qwen3MoeDims {
    /// The dimensions of a preset, for a tokenizer of `tokenizer_vocab` ids.
    ///
    /// - tiny: hidden 64, 4 layers (all MoE), 8 experts top-2 of FFN 64, dense FFN 128,
    ///   4 query / 2 KV heads of dim 16, vocab = tokenizer rounded up to 64, context 2048.
    /// - bench: hidden 512, 8 layers (all MoE), 32 experts top-4 of FFN 256, dense FFN 1024,
    ///   8 query / 4 KV heads of dim 64, vocab 32000, context 4096 (about 140M parameters).
    pub fn for_preset(preset: Preset, tokenizer_vocab: usize) -> Self {
        match preset {
            Preset::Tiny => Self {
                vocab_size: tokenizer_vocab.div_ceil(64) * 64,
                hidden_size: 64,
                num_hidden_layers: 4,
                num_attention_heads: 4,
                num_key_value_heads: 2,
                head_dim: 16,
                num_experts: 8,
                num_experts_per_tok: 2,
                moe_intermediate_size: 64,
                intermediate_size: 128,
                decoder_sparse_step: 1,
                mlp_only_layers: vec![],
                max_position_embeddings: 2048,
            },
            Preset::Bench => Self {
                vocab_size: 32000.max(tokenizer_vocab.div_ceil(64) * 64),
                hidden_size: 512,
                num_hidden_layers: 8,
                num_attention_heads: 8,
                num_key_value_heads: 4,
                head_dim: 64,
                num_experts: 32,
                num_experts_per_tok: 4,
                moe_intermediate_size: 256,
                intermediate_size: 1024,
                decoder_sparse_step: 1,
                mlp_only_layers: vec![],
                max_position_embeddings: 4096,
            },
        }
    }

    /// Whether layer `i` has a sparse MoE block (the rule of transformers' `Qwen3MoeDecoderLayer`).
    pub fn is_moe(&self, i: usize) -> bool {
        !self.mlp_only_layers.contains(&i)
            && self.num_experts > 0
            && (i + 1).is_multiple_of(self.decoder_sparse_step.max(1))
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
        json!({
            "architectures": ["Qwen3MoeForCausalLM"],
            "attention_bias": false,
            "attention_dropout": 0.0,
            "bos_token_id": vocab.bos_token_id,
            "decoder_sparse_step": self.decoder_sparse_step,
            "eos_token_id": vocab.eos_token_id,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
            "max_window_layers": self.num_hidden_layers,
            "mlp_only_layers": self.mlp_only_layers,
            "model_type": "qwen3_moe",
            "moe_intermediate_size": self.moe_intermediate_size,
            "norm_topk_prob": true,
            "num_attention_heads": self.num_attention_heads,
            "num_experts": self.num_experts,
            "num_experts_per_tok": self.num_experts_per_tok,
            "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_key_value_heads,
            "output_router_logits": false,
            "rms_norm_eps": 1e-6,
            "rope_scaling": null,
            "rope_theta": 1_000_000.0,
            "router_aux_loss_coef": 0.001,
            "sliding_window": null,
            "tie_word_embeddings": false,
            "torch_dtype": "float32",
            "use_cache": true,
            "use_sliding_window": false,
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
            t.push(norm(format!("{p}.self_attn.q_norm.weight"), hd));
            t.push(norm(format!("{p}.self_attn.k_norm.weight"), hd));
            if self.is_moe(i) {
                let f = self.moe_intermediate_size;
                t.push(linear(format!("{p}.mlp.gate.weight"), self.num_experts, h));
                for e in 0..self.num_experts {
                    let q = format!("{p}.mlp.experts.{e}");
                    t.push(linear(format!("{q}.gate_proj.weight"), f, h));
                    t.push(linear(format!("{q}.up_proj.weight"), f, h));
                    t.push(linear(format!("{q}.down_proj.weight"), h, f));
                }
            } else {
                let f = self.intermediate_size;
                t.push(linear(format!("{p}.mlp.gate_proj.weight"), f, h));
                t.push(linear(format!("{p}.mlp.up_proj.weight"), f, h));
                t.push(linear(format!("{p}.mlp.down_proj.weight"), h, f));
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
    fn bench_preset_has_about_140m_parameters() {
        let d = Qwen3MoeDims::for_preset(Preset::Bench, 4000);
        let params: usize = d.tensors().iter().map(TensorSpec::numel).sum();
        assert!((135_000_000..145_000_000).contains(&params), "{params}");
        assert_eq!(d.vocab_size, 32000);
    }

    #[test]
    fn dense_layers_follow_mlp_only_layers_and_sparse_step() {
        let mut d = Qwen3MoeDims::for_preset(Preset::Tiny, 1024);
        d.decoder_sparse_step = 2;
        d.mlp_only_layers = vec![3];
        let moe: Vec<bool> = (0..4).map(|i| d.is_moe(i)).collect();
        assert_eq!(moe, [false, true, false, false]);
        let names: Vec<String> = d.tensors().into_iter().map(|t| t.name).collect();
        assert!(names.contains(&"model.layers.0.mlp.gate_proj.weight".to_string()));
        assert!(names.contains(&"model.layers.1.mlp.experts.7.down_proj.weight".to_string()));
    }
}
