//! What a backend reports about itself: the served model, its parts' health, its ranks' load.

/// Health of one part of the deployment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ComponentHealth {
    pub name: String,
    pub healthy: bool,
    pub detail: String,
}

/// Load of one worker rank, as the `Loads` API reports it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RankLoad {
    pub group: String,
    pub rank: u32,
    pub running_sequences: u32,
    pub queued_tokens: u64,
    pub kv_usage: f32,
}

/// Static facts about the served model.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelInfo {
    /// The name clients use in `model`.
    pub id: String,
    pub architecture: String,
    pub max_context: u32,
    pub vocab_size: u32,
    pub num_experts: u32,
    pub experts_per_token: u32,
}
