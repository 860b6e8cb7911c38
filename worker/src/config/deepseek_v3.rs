//! `deepseek_v3`: DeepSeek-V3/R1 and Kimi-K2 (same architecture, other sizes).

use super::{Arch, ConfigError, ConfigSource, ModelShape, RopeConfig};

#[derive(Debug, Clone, PartialEq)]
pub struct DeepseekV3Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// FFN width of the dense layers before `first_k_dense_replace`.
    pub intermediate_size: usize,
    pub moe_intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub n_shared_experts: usize,
    pub n_routed_experts: usize,
    pub num_experts_per_tok: usize,
    pub routed_scaling_factor: f64,
    pub n_group: usize,
    pub topk_group: usize,
    pub norm_topk_prob: bool,
    pub first_k_dense_replace: usize,
    pub moe_layer_freq: usize,
    /// `None`: queries come from one `q_proj` (DeepSeek-V2-Lite style).
    pub q_lora_rank: Option<usize>,
    pub kv_lora_rank: usize,
    pub qk_nope_head_dim: usize,
    pub qk_rope_head_dim: usize,
    pub v_head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope: RopeConfig,
    /// Whether the rotary part pairs adjacent elements (the published weights' layout).
    pub rope_interleave: bool,
    pub max_position_embeddings: usize,
    pub attention_bias: bool,
    pub tie_word_embeddings: bool,
}

impl DeepseekV3Config {
    pub fn parse(src: &ConfigSource) -> Result<Self, ConfigError> {
        let n_routed_experts: usize = src.req("n_routed_experts")?;
        let num_experts_per_tok: usize = src.req("num_experts_per_tok")?;
        let n_group = src.or("n_group", 1usize)?;
        let topk_group = src.or("topk_group", 1usize)?;
        if n_group == 0 || !n_routed_experts.is_multiple_of(n_group) {
            return Err(src.invalid(
                "n_group",
                format!("must divide n_routed_experts ({n_routed_experts})"),
            ));
        }
        if topk_group == 0 || topk_group > n_group {
            return Err(src.invalid("topk_group", format!("must be in 1..={n_group} (n_group)")));
        }
        if n_routed_experts > 0
            && (num_experts_per_tok == 0 || num_experts_per_tok > n_routed_experts)
        {
            return Err(src.invalid(
                "num_experts_per_tok",
                format!("must be in 1..={n_routed_experts} (n_routed_experts)"),
            ));
        }
        let qk_rope_head_dim = src.positive("qk_rope_head_dim")?;
        if qk_rope_head_dim % 2 != 0 {
            return Err(src.invalid("qk_rope_head_dim", "must be even for rotary embeddings"));
        }
        let scoring: String = src.or("scoring_func", "sigmoid".to_string())?;
        if scoring != "sigmoid" {
            return Err(src.invalid(
                "scoring_func",
                format!("`{scoring}` is not supported (sigmoid)"),
            ));
        }
        Ok(Self {
            vocab_size: src.positive("vocab_size")?,
            hidden_size: src.positive("hidden_size")?,
            intermediate_size: src.positive("intermediate_size")?,
            moe_intermediate_size: src.positive("moe_intermediate_size")?,
            num_hidden_layers: src.positive("num_hidden_layers")?,
            num_attention_heads: src.positive("num_attention_heads")?,
            n_shared_experts: src.or("n_shared_experts", 0)?,
            n_routed_experts,
            num_experts_per_tok,
            routed_scaling_factor: src.or("routed_scaling_factor", 1.0)?,
            n_group,
            topk_group,
            norm_topk_prob: src.or("norm_topk_prob", true)?,
            first_k_dense_replace: src.or("first_k_dense_replace", 0)?,
            moe_layer_freq: src.or("moe_layer_freq", 1usize)?.max(1),
            q_lora_rank: src.opt("q_lora_rank")?,
            kv_lora_rank: src.positive("kv_lora_rank")?,
            qk_nope_head_dim: src.positive("qk_nope_head_dim")?,
            qk_rope_head_dim,
            v_head_dim: src.positive("v_head_dim")?,
            rms_norm_eps: src.or("rms_norm_eps", 1e-6)?,
            rope: RopeConfig::parse(src, 10_000.0)?,
            rope_interleave: src.or("rope_interleave", true)?,
            max_position_embeddings: src.or("max_position_embeddings", 4096)?,
            attention_bias: src.or("attention_bias", false)?,
            tie_word_embeddings: src.or("tie_word_embeddings", false)?,
        })
    }

    pub fn qk_head_dim(&self) -> usize {
        self.qk_nope_head_dim + self.qk_rope_head_dim
    }

    pub fn is_moe_layer(&self, layer: usize) -> bool {
        self.n_routed_experts > 0
            && layer >= self.first_k_dense_replace
            && layer.is_multiple_of(self.moe_layer_freq)
    }

    pub fn shape(&self) -> ModelShape {
        ModelShape {
            arch: Arch::DeepseekV3,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            num_layers: self.num_hidden_layers,
            moe_layers: (0..self.num_hidden_layers)
                .filter(|&l| self.is_moe_layer(l))
                .collect(),
            num_experts: self.n_routed_experts,
            experts_per_token: self.num_experts_per_tok,
            // The cache holds decompressed per-head keys and values (see model::deepseek_v3).
            kv_key_width: self.num_attention_heads * self.qk_head_dim(),
            kv_value_width: self.num_attention_heads * self.v_head_dim,
            max_position_embeddings: self.max_position_embeddings,
        }
    }
}
