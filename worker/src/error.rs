//! The error type of model execution.

use crate::config::ConfigError;
use crate::kv_cache::KvError;
use crate::weights::WeightsError;

/// Why loading or running a model failed. Input problems name the sequence or field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("invalid input: {0}")]
    Input(String),
    #[error("expert {expert} of layer {layer} is not hosted by this worker")]
    ExpertNotHosted { layer: usize, expert: u32 },
    #[error("expert dispatch failed: {0}")]
    Dispatch(String),
    #[error("group communication failed: {0}")]
    Comm(#[from] moeflow_comm::CommError),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
