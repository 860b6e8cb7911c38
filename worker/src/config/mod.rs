//! Model configuration: reads a Hugging Face `config.json` as the published checkpoints and
//! current transformers write it, and normalises it into one typed config per architecture.
//!
//! Field names differ between checkpoint generations (top-level `rope_theta`/`rope_scaling`
//! versus `rope_parameters`; `type` versus `rope_type`; multimodal Llama-4 configs that nest the
//! decoder under `text_config`), so parsing goes through [`ConfigSource`], which knows those
//! aliases and names the field in every error.

mod arch;
mod deepseek_v3;
mod llama4;
mod quant;
mod qwen3_moe;
mod rope;
mod source;

pub use arch::{Arch, UnknownArch};
pub use deepseek_v3::DeepseekV3Config;
pub use llama4::Llama4Config;
pub use quant::WeightFormat;
pub use qwen3_moe::Qwen3MoeConfig;
pub use rope::{RopeConfig, RopeScaling};
pub use source::ConfigSource;

use std::path::{Path, PathBuf};

/// Why a `config.json` could not be used. Every variant names the file, and where a field is
/// at fault, the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: malformed JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: missing field `{field}`")]
    Missing { path: PathBuf, field: String },
    #[error("{path}: field `{field}`: {msg}")]
    Invalid {
        path: PathBuf,
        field: String,
        msg: String,
    },
    #[error("{path}: {source}")]
    UnknownArch {
        path: PathBuf,
        #[source]
        source: UnknownArch,
    },
}

/// The normalised configuration of a supported model.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    Qwen3Moe(Qwen3MoeConfig),
    DeepseekV3(DeepseekV3Config),
    Llama4(Llama4Config),
}

/// The shape facts every architecture shares, which the runtime outside the model (KV cache,
/// placement, tracing, sampling) needs without knowing the architecture.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModelShape {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    /// Layers whose feed-forward part is a routed MoE block, ascending.
    pub moe_layers: Vec<usize>,
    pub num_experts: usize,
    pub experts_per_token: usize,
    /// Width of one token's key and value in one layer's KV cache (all heads together).
    pub kv_key_width: usize,
    pub kv_value_width: usize,
    pub max_position_embeddings: usize,
}

impl ModelConfig {
    /// Reads `<dir>/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self, ConfigError> {
        Self::from_file(&dir.join("config.json"))
    }

    /// Reads and normalises one `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        Self::from_value(read_json(path)?, path)
    }

    /// Parses config text; `path` is used only in error messages.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self, ConfigError> {
        Self::from_value(parse_json(text, path)?, path)
    }

    fn from_value(value: serde_json::Value, path: &Path) -> Result<Self, ConfigError> {
        let src = ConfigSource::new(value, path)?;
        let arch = src.arch()?;
        Ok(match arch {
            Arch::Qwen3Moe => ModelConfig::Qwen3Moe(Qwen3MoeConfig::parse(&src)?),
            Arch::DeepseekV3 => ModelConfig::DeepseekV3(DeepseekV3Config::parse(&src)?),
            Arch::Llama4 => ModelConfig::Llama4(Llama4Config::parse(&src)?),
        })
    }

    pub fn arch(&self) -> Arch {
        match self {
            ModelConfig::Qwen3Moe(_) => Arch::Qwen3Moe,
            ModelConfig::DeepseekV3(_) => Arch::DeepseekV3,
            ModelConfig::Llama4(_) => Arch::Llama4,
        }
    }

    pub fn shape(&self) -> ModelShape {
        match self {
            ModelConfig::Qwen3Moe(c) => c.shape(),
            ModelConfig::DeepseekV3(c) => c.shape(),
            ModelConfig::Llama4(c) => c.shape(),
        }
    }

    pub fn tie_word_embeddings(&self) -> bool {
        match self {
            ModelConfig::Qwen3Moe(c) => c.tie_word_embeddings,
            ModelConfig::DeepseekV3(c) => c.tie_word_embeddings,
            ModelConfig::Llama4(c) => c.tie_word_embeddings,
        }
    }
}

/// The JSON document in `path`.
pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_json(&text, path)
}

fn parse_json(text: &str, path: &Path) -> Result<serde_json::Value, ConfigError> {
    serde_json::from_str(text).map_err(|source| ConfigError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Identity of a checkpoint for group membership checks: the architecture and an FNV-1a hash
/// of its `config.json`, so ranks that loaded different models refuse to form a group.
pub fn model_fingerprint(dir: &Path) -> Result<String, ConfigError> {
    let path = dir.join("config.json");
    let bytes = std::fs::read(&path).map_err(|source| ConfigError::Io {
        path: path.clone(),
        source,
    })?;
    let cfg = ModelConfig::from_json_str(&String::from_utf8_lossy(&bytes), &path)?;
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    Ok(format!("{}:{h:016x}", cfg.arch()))
}

#[cfg(test)]
mod tests;
