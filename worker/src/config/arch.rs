//! The model architectures moeflow executes, named as Hugging Face's `model_type` names them.

use std::fmt;
use std::str::FromStr;

/// A supported MoE architecture. The string form is the `model_type` field of a Hugging Face
/// `config.json`, so that a checkpoint directory identifies its own architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// Qwen3-MoE (Qwen3-30B-A3B, Qwen3-235B-A22B).
    Qwen3Moe,
    /// DeepSeek-V3/R1 and Kimi-K2 (multi-head latent attention, group-limited sigmoid routing).
    DeepseekV3,
    /// The Llama-4 text model (Scout, Maverick).
    Llama4,
}

impl Arch {
    /// Every supported architecture, in a stable order (for help texts and tests).
    pub const ALL: [Arch; 3] = [Arch::Qwen3Moe, Arch::DeepseekV3, Arch::Llama4];

    /// The Hugging Face `model_type` string.
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Qwen3Moe => "qwen3_moe",
            Arch::DeepseekV3 => "deepseek_v3",
            Arch::Llama4 => "llama4",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.model_type())
    }
}

/// The error for a `model_type` moeflow does not execute.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown architecture `{0}` (supported: qwen3_moe, deepseek_v3, llama4)")]
pub struct UnknownArch(pub String);

impl FromStr for Arch {
    type Err = UnknownArch;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "qwen3_moe" => Ok(Arch::Qwen3Moe),
            // The multimodal Llama-4 config nests the text model under `text_config` with
            // `model_type` `llama4_text`; both name the same decoder.
            "llama4" | "llama4_text" => Ok(Arch::Llama4),
            "deepseek_v3" | "kimi_k2" => Ok(Arch::DeepseekV3),
            other => Err(UnknownArch(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_model_type() {
        for a in Arch::ALL {
            assert_eq!(a.model_type().parse::<Arch>().unwrap(), a);
        }
        assert!("mixtral".parse::<Arch>().is_err());
    }
}
