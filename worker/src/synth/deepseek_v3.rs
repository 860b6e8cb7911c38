//! DeepSeek-V3 checkpoints (`DeepseekV3ForCausalLM`, also Kimi-K2's layout), as
//! deepseek-ai/DeepSeek-V3 publishes them: multi-head latent attention with low-rank q and kv
//! projections, dense FFNs before `first_k_dense_replace`, then per-expert MoE layers with a
//! shared expert and a sigmoid router with `e_score_correction_bias`.

use serde_json::json;

use super::tensors::{linear, norm, small, TensorSpec};
use super::{ModelSpec, Preset, Vocab};

/// The dimensions of a generated DeepSeek-V3 model (config.json field names).
#[derive(Debug, Clone, PartialEq)]
pub struct DeepseekV3Dims {
    /// Rows of the embedding and LM head.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Hidden size of the dense layers' FFN.
    pub intermediate_size: usize,
    /// Hidden size of each routed expert (and, times `n_shared_experts`, the shared one).
    pub moe_intermediate_size: usize,
    /// Attention heads (also `num_key_value_heads`).
    pub num_attention_heads: usize,
    /// Rank of the query compression; `None` gives a plain `q_proj`.
    pub q_lora_rank: Option<usize>,
    /// Rank of the key/value compression (the latent cached per token).
    pub kv_lora_rank: usize,
    /// Per-head query/key dimension without rotary embedding.
    pub qk_nope_head_dim: usize,
    /// Per-head query/key dimension with rotary embedding (shared across heads for keys).
    pub qk_rope_head_dim: usize,
    /// Per-head value dimension.
    pub v_head_dim: usize,
    /// Routed experts per MoE layer.
    pub n_routed_experts: usize,
    /// Always-active shared experts per MoE layer.
    pub n_shared_experts: usize,
    /// Experts selected per token.
    pub num_experts_per_tok: usize,
    /// Expert groups for group-limited routing.
    pub n_group: usize,
    /// Groups a token may route to.
    pub topk_group: usize,
    /// Scale applied to the routed experts' combined output.
    pub routed_scaling_factor: f64,
    /// Layers before this index are dense.
    pub first_k_dense_replace: usize,
    /// Context length (after YaRN scaling).
    pub max_position_embeddings: usize,
    /// YaRN scaling factor.
    pub yarn_factor: f64,
    /// Context length the rotary frequencies were trained for.
    pub original_max_position_embeddings: usize,
}

impl DeepseekV3Dims {
    /// The dimensions of a preset, for a tokenizer of `tokenizer_vocab` ids.
    ///
    /// - tiny: hidden 64, 3 layers (layer 0 dense), 4 heads, q_lora_rank 32, kv_lora_rank 16,
    ///   nope/rope/v head dims 16/8/16, 8 experts top-2 in 4 groups (top 2 groups), 1 shared,
    ///   expert FFN 32, dense FFN 96, scaling 2.5, YaRN factor 4 over 512, context 2048.
    /// - bench: hidden 512, 8 layers (layer 0 dense), 8 heads, q_lora_rank 256, kv_lora_rank
    ///   128, nope/rope/v 64/32/64, 32 experts top-4 in 4 groups (top 2), 1 shared, expert FFN
    ///   256, dense FFN 1024, YaRN factor 4 over 1024, vocab 32000, context 4096 (about 132M
    ///   parameters).
    pub fn for_preset(preset: Preset, tokenizer_vocab: usize) -> Self {
        match preset {
            Preset::Tiny => Self {
                vocab_size: tokenizer_vocab.div_ceil(64) * 64,
                hidden_size: 64,
                num_hidden_layers: 3,
                intermediate_size: 96,
                moe_intermediate_size: 32,
                num_attention_heads: 4,
                q_lora_rank: Some(32),
                kv_lora_rank: 16,
                qk_nope_head_dim: 16,
                qk_rope_head_dim: 8,
                v_head_dim: 16,
                n_routed_experts: 8,
                n_shared_experts: 1,
                num_experts_per_tok: 2,
                n_group: 4,
                topk_group: 2,
                routed_scaling_factor: 2.5,
                first_k_dense_replace: 1,
                max_position_embeddings: 2048,
                yarn_factor: 4.0,
                original_max_position_embeddings: 512,
            },
            Preset::Bench => Self {
                vocab_size: 32000.max(tokenizer_vocab.div_ceil(64) * 64),
                hidden_size: 512,
                num_hidden_layers: 8,
                intermediate_size: 1024,
                moe_intermediate_size: 256,
                num_attention_heads: 8,
                q_lora_rank: Some(256),
                kv_lora_rank: 128,
                qk_nope_head_dim: 64,
                qk_rope_head_dim: 32,
                v_head_dim: 64,
                n_routed_experts: 32,
                n_shared_experts: 1,
                num_experts_per_tok: 4,
                n_group: 4,
                topk_group: 2,
                routed_scaling_factor: 2.5,
                first_k_dense_replace: 1,
                max_position_embeddings: 4096,
                yarn_factor: 4.0,
                original_max_position_embeddings: 1024,
            },
        }
    }

    /// Whether layer `i` has a MoE block (`moe_layer_freq` is 1).
    pub fn is_moe(&self, i: usize) -> bool {
        self.n_routed_experts > 0 && i >= self.first_k_dense_replace
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
        let mut config = json!({
            "architectures": ["DeepseekV3ForCausalLM"],
            "attention_bias": false,
            "attention_dropout": 0.0,
            "aux_loss_alpha": 0.001,
            "bos_token_id": vocab.bos_token_id,
            "eos_token_id": vocab.eos_token_id,
            "ep_size": 1,
            "first_k_dense_replace": self.first_k_dense_replace,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate_size,
            "kv_lora_rank": self.kv_lora_rank,
            "max_position_embeddings": self.max_position_embeddings,
            "model_type": "deepseek_v3",
            "moe_intermediate_size": self.moe_intermediate_size,
            "moe_layer_freq": 1,
        });
        // Two literals: one would exceed `json!`'s macro recursion limit.
        let routing = json!({
            "n_group": self.n_group,
            "n_routed_experts": self.n_routed_experts,
            "n_shared_experts": self.n_shared_experts,
            "norm_topk_prob": true,
            "num_attention_heads": self.num_attention_heads,
            "num_experts_per_tok": self.num_experts_per_tok,
            "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_attention_heads,
            "num_nextn_predict_layers": 0,
            "pretraining_tp": 1,
            "q_lora_rank": self.q_lora_rank,
            "qk_nope_head_dim": self.qk_nope_head_dim,
            "qk_rope_head_dim": self.qk_rope_head_dim,
            "rms_norm_eps": 1e-6,
            "rope_scaling": {
                "beta_fast": 32,
                "beta_slow": 1,
                "factor": self.yarn_factor,
                "mscale": 1.0,
                "mscale_all_dim": 1.0,
                "original_max_position_embeddings": self.original_max_position_embeddings,
                "type": "yarn",
            },
            "rope_theta": 10000,
            "routed_scaling_factor": self.routed_scaling_factor,
            "scoring_func": "sigmoid",
            "seq_aux": true,
            "tie_word_embeddings": false,
            "topk_group": self.topk_group,
            "topk_method": "noaux_tc",
            "torch_dtype": "float32",
            "use_cache": true,
            "v_head_dim": self.v_head_dim,
            "vocab_size": self.vocab_size,
        });
        if let (Some(a), serde_json::Value::Object(b)) = (config.as_object_mut(), routing) {
            a.extend(b);
        }
        config
    }

    fn tensors(&self) -> Vec<TensorSpec> {
        let h = self.hidden_size;
        let nh = self.num_attention_heads;
        let qk = self.qk_nope_head_dim + self.qk_rope_head_dim;
        let mut t = vec![linear("model.embed_tokens.weight", self.vocab_size, h)];
        for i in 0..self.num_hidden_layers {
            let p = format!("model.layers.{i}");
            t.push(norm(format!("{p}.input_layernorm.weight"), h));
            t.push(norm(format!("{p}.post_attention_layernorm.weight"), h));
            let a = format!("{p}.self_attn");
            match self.q_lora_rank {
                Some(r) => {
                    t.push(linear(format!("{a}.q_a_proj.weight"), r, h));
                    t.push(norm(format!("{a}.q_a_layernorm.weight"), r));
                    t.push(linear(format!("{a}.q_b_proj.weight"), nh * qk, r));
                }
                None => t.push(linear(format!("{a}.q_proj.weight"), nh * qk, h)),
            }
            let kv = self.kv_lora_rank;
            t.push(linear(
                format!("{a}.kv_a_proj_with_mqa.weight"),
                kv + self.qk_rope_head_dim,
                h,
            ));
            t.push(norm(format!("{a}.kv_a_layernorm.weight"), kv));
            t.push(linear(
                format!("{a}.kv_b_proj.weight"),
                nh * (self.qk_nope_head_dim + self.v_head_dim),
                kv,
            ));
            t.push(linear(
                format!("{a}.o_proj.weight"),
                h,
                nh * self.v_head_dim,
            ));
            if self.is_moe(i) {
                let f = self.moe_intermediate_size;
                t.push(linear(
                    format!("{p}.mlp.gate.weight"),
                    self.n_routed_experts,
                    h,
                ));
                t.push(small(
                    format!("{p}.mlp.gate.e_score_correction_bias"),
                    self.n_routed_experts,
                    0.02,
                ));
                for e in 0..self.n_routed_experts {
                    let q = format!("{p}.mlp.experts.{e}");
                    t.push(linear(format!("{q}.gate_proj.weight"), f, h));
                    t.push(linear(format!("{q}.up_proj.weight"), f, h));
                    t.push(linear(format!("{q}.down_proj.weight"), h, f));
                }
                let fs = f * self.n_shared_experts;
                if fs > 0 {
                    let q = format!("{p}.mlp.shared_experts");
                    t.push(linear(format!("{q}.gate_proj.weight"), fs, h));
                    t.push(linear(format!("{q}.up_proj.weight"), fs, h));
                    t.push(linear(format!("{q}.down_proj.weight"), h, fs));
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
    fn bench_preset_is_comparable_to_the_qwen_one() {
        let d = DeepseekV3Dims::for_preset(Preset::Bench, 4000);
        let params: usize = d.tensors().iter().map(TensorSpec::numel).sum();
        assert!((120_000_000..145_000_000).contains(&params), "{params}");
    }

    #[test]
    fn without_q_lora_the_query_is_one_projection() {
        let mut d = DeepseekV3Dims::for_preset(Preset::Tiny, 1024);
        d.q_lora_rank = None;
        let t = d.tensors();
        let q = t
            .iter()
            .find(|t| t.name == "model.layers.0.self_attn.q_proj.weight")
            .unwrap();
        assert_eq!(q.shape, [4 * 24, 64]);
        assert!(!t.iter().any(|t| t.name.contains("q_a_proj")));
    }
}
