//! `qwen3_moe`: Qwen3-30B-A3B, Qwen3-235B-A22B.

use super::{Arch, ConfigError, ConfigSource, ModelShape, RopeConfig};

#[derive(Debug, Clone, PartialEq)]
pub struct Qwen3MoeConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// FFN width of the dense layers (`mlp_only_layers`).
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope: RopeConfig,
    pub max_position_embeddings: usize,
    pub attention_bias: bool,
    pub tie_word_embeddings: bool,
    pub num_experts: usize,
    pub num_experts_per_tok: usize,
    pub moe_intermediate_size: usize,
    pub norm_topk_prob: bool,
    pub decoder_sparse_step: usize,
    pub mlp_only_layers: Vec<usize>,
}

impl Qwen3MoeConfig {
    pub fn parse(src: &ConfigSource) -> Result<Self, ConfigError> {
        let hidden_size = src.positive("hidden_size")?;
        let num_attention_heads = src.positive("num_attention_heads")?;
        let num_key_value_heads = src.or("num_key_value_heads", num_attention_heads)?;
        let head_dim = match src.opt::<usize>("head_dim")? {
            Some(d) => d,
            None => {
                src.divisible(
                    "hidden_size",
                    hidden_size,
                    num_attention_heads,
                    "num_attention_heads",
                )?;
                hidden_size / num_attention_heads
            }
        };
        if num_key_value_heads == 0 {
            return Err(src.invalid("num_key_value_heads", "must be positive"));
        }
        src.divisible(
            "num_attention_heads",
            num_attention_heads,
            num_key_value_heads,
            "num_key_value_heads",
        )?;
        // Published configs say `num_experts`; transformers 5 writes `num_local_experts`.
        let num_experts: usize = match src.opt("num_experts")? {
            Some(n) => n,
            None => src.req("num_local_experts")?,
        };
        let num_experts_per_tok: usize = src.req("num_experts_per_tok")?;
        if num_experts > 0 && (num_experts_per_tok == 0 || num_experts_per_tok > num_experts) {
            return Err(src.invalid(
                "num_experts_per_tok",
                format!("must be in 1..={num_experts} (num_experts)"),
            ));
        }
        let num_hidden_layers = src.positive("num_hidden_layers")?;
        let mlp_only_layers: Vec<usize> = src.or("mlp_only_layers", Vec::new())?;
        if let Some(&l) = mlp_only_layers.iter().find(|&&l| l >= num_hidden_layers) {
            return Err(src.invalid(
                "mlp_only_layers",
                format!("layer {l} is out of range (num_hidden_layers = {num_hidden_layers})"),
            ));
        }
        let decoder_sparse_step = src.or("decoder_sparse_step", 1usize)?;
        if decoder_sparse_step == 0 {
            return Err(src.invalid("decoder_sparse_step", "must be positive"));
        }
        if head_dim % 2 != 0 {
            return Err(src.invalid("head_dim", "must be even for rotary embeddings"));
        }
        Ok(Self {
            vocab_size: src.positive("vocab_size")?,
            hidden_size,
            intermediate_size: src.or("intermediate_size", 0)?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: src.or("rms_norm_eps", 1e-6)?,
            rope: RopeConfig::parse(src, 10_000.0)?,
            max_position_embeddings: src.or("max_position_embeddings", 32_768)?,
            attention_bias: src.or("attention_bias", false)?,
            tie_word_embeddings: src.or("tie_word_embeddings", false)?,
            num_experts,
            num_experts_per_tok,
            moe_intermediate_size: src.req("moe_intermediate_size")?,
            norm_topk_prob: src.or("norm_topk_prob", false)?,
            decoder_sparse_step,
            mlp_only_layers,
        })
    }

    /// Whether `layer` has a routed MoE block (transformers' rule).
    pub fn is_moe_layer(&self, layer: usize) -> bool {
        !self.mlp_only_layers.contains(&layer)
            && self.num_experts > 0
            && (layer + 1).is_multiple_of(self.decoder_sparse_step)
    }

    pub fn shape(&self) -> ModelShape {
        ModelShape {
            arch: Arch::Qwen3Moe,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            num_layers: self.num_hidden_layers,
            moe_layers: (0..self.num_hidden_layers)
                .filter(|&l| self.is_moe_layer(l))
                .collect(),
            num_experts: self.num_experts,
            experts_per_token: self.num_experts_per_tok,
            kv_key_width: self.num_key_value_heads * self.head_dim,
            kv_value_width: self.num_key_value_heads * self.head_dim,
            max_position_embeddings: self.max_position_embeddings,
        }
    }
}
