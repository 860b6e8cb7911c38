//! Model execution for moeflow.
//!
//! Loads Hugging Face MoE checkpoints (`qwen3_moe`, `deepseek_v3`, `llama4`) and runs them with
//! candle: every routed expert individually addressable (a worker may host any subset), the
//! router's decisions visible to observers, the KV cache in fixed-size blocks. See
//! ARCHITECTURE.md for how this crate fits the runtime.

pub mod config;
pub mod error;
pub mod generate;
pub mod group;
pub mod kv_cache;
pub mod model;
pub mod moe;
pub mod nn;
pub mod profile;
pub mod progress;
pub mod runtime;
pub mod sampling;
pub mod synth;
pub mod weights;

pub use error::{ModelError, Result};
