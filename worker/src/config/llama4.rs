//! `llama4`: the text decoder of Llama-4 Scout and Maverick.

use super::{Arch, ConfigError, ConfigSource, ModelShape, RopeConfig};

#[derive(Debug, Clone, PartialEq)]
pub struct Llama4Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// FFN width of each routed expert and of the shared expert.
    pub intermediate_size: usize,
    /// FFN width of the dense (non-MoE) layers.
    pub intermediate_size_mlp: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope: RopeConfig,
    pub max_position_embeddings: usize,
    pub num_local_experts: usize,
    pub num_experts_per_tok: usize,
    pub moe_layers: Vec<usize>,
    /// Per layer: whether it applies rotary embeddings (`no_rope_layers[i] == 1`). Rope layers
    /// use chunked attention; NoPE layers attend to the full context.
    pub use_rope: Vec<bool>,
    pub attention_chunk_size: Option<usize>,
    pub use_qk_norm: bool,
    pub attn_temperature_tuning: bool,
    pub floor_scale: f64,
    pub attn_scale: f64,
    pub attention_bias: bool,
    pub tie_word_embeddings: bool,
}

impl Llama4Config {
    pub fn parse(src: &ConfigSource) -> Result<Self, ConfigError> {
        let hidden_size = src.positive("hidden_size")?;
        let num_hidden_layers = src.positive("num_hidden_layers")?;
        let num_attention_heads = src.positive("num_attention_heads")?;
        let num_key_value_heads = src.or("num_key_value_heads", num_attention_heads)?;
        if num_key_value_heads == 0 {
            return Err(src.invalid("num_key_value_heads", "must be positive"));
        }
        src.divisible(
            "num_attention_heads",
            num_attention_heads,
            num_key_value_heads,
            "num_key_value_heads",
        )?;
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
        if head_dim % 2 != 0 {
            return Err(src.invalid("head_dim", "must be even for rotary embeddings"));
        }
        let step = src.or("interleave_moe_layer_step", 1usize)?;
        if step == 0 {
            return Err(src.invalid("interleave_moe_layer_step", "must be positive"));
        }
        let moe_layers: Vec<usize> = match src.opt::<Vec<usize>>("moe_layers")? {
            Some(l) => l,
            None => (step - 1..num_hidden_layers).step_by(step).collect(),
        };
        if let Some(&l) = moe_layers.iter().find(|&&l| l >= num_hidden_layers) {
            return Err(src.invalid("moe_layers", format!("layer {l} is out of range")));
        }
        let interval = src.or("no_rope_layer_interval", 4usize)?.max(1);
        let use_rope: Vec<bool> = match src.opt::<Vec<u8>>("no_rope_layers")? {
            Some(v) if !v.is_empty() => {
                if v.len() != num_hidden_layers {
                    return Err(src.invalid(
                        "no_rope_layers",
                        format!(
                            "has {} entries, num_hidden_layers is {num_hidden_layers}",
                            v.len()
                        ),
                    ));
                }
                v.into_iter().map(|x| x != 0).collect()
            }
            _ => (0..num_hidden_layers)
                .map(|l| (l + 1) % interval != 0)
                .collect(),
        };
        let num_local_experts = src.positive("num_local_experts")?;
        let num_experts_per_tok = src.or("num_experts_per_tok", 1usize)?;
        if num_experts_per_tok == 0 || num_experts_per_tok > num_local_experts {
            return Err(src.invalid(
                "num_experts_per_tok",
                format!("must be in 1..={num_local_experts} (num_local_experts)"),
            ));
        }
        Ok(Self {
            vocab_size: src.positive("vocab_size")?,
            hidden_size,
            intermediate_size: src.positive("intermediate_size")?,
            intermediate_size_mlp: src.or("intermediate_size_mlp", 0)?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: src.or("rms_norm_eps", 1e-5)?,
            rope: RopeConfig::parse(src, 500_000.0)?,
            max_position_embeddings: src.or("max_position_embeddings", 131_072)?,
            num_local_experts,
            num_experts_per_tok,
            moe_layers,
            use_rope,
            attention_chunk_size: src.opt::<usize>("attention_chunk_size")?.filter(|&c| c > 0),
            use_qk_norm: src.or("use_qk_norm", true)?,
            attn_temperature_tuning: src.or("attn_temperature_tuning", true)?,
            floor_scale: src.or("floor_scale", 8192.0)?,
            attn_scale: src.or("attn_scale", 0.1)?,
            attention_bias: src.or("attention_bias", false)?,
            tie_word_embeddings: src.or("tie_word_embeddings", false)?,
        })
    }

    pub fn is_moe_layer(&self, layer: usize) -> bool {
        self.moe_layers.contains(&layer)
    }

    pub fn shape(&self) -> ModelShape {
        let mut moe_layers = self.moe_layers.clone();
        moe_layers.sort_unstable();
        moe_layers.dedup();
        ModelShape {
            arch: Arch::Llama4,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            num_layers: self.num_hidden_layers,
            moe_layers,
            num_experts: self.num_local_experts,
            experts_per_token: self.num_experts_per_tok,
            kv_key_width: self.num_key_value_heads * self.head_dim,
            kv_value_width: self.num_key_value_heads * self.head_dim,
            max_position_embeddings: self.max_position_embeddings,
        }
    }
}
