//! `GET /v1/models`: the one served model, in OpenAI's list shape.

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use crate::ids::unix_seconds;
use crate::state::FrontendState;

#[derive(Debug, Serialize)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

#[derive(Debug, Serialize)]
pub struct ModelCard {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    /// vLLM's extension: the context length clients may plan with.
    pub max_model_len: u32,
}

/// The handler.
pub async fn list_models(State(state): State<FrontendState>) -> Json<ModelList> {
    let info = state.model_info();
    Json(ModelList {
        object: "list",
        data: vec![ModelCard {
            id: info.id,
            object: "model",
            created: unix_seconds(),
            owned_by: "moeflow",
            max_model_len: info.max_context,
        }],
    })
}
