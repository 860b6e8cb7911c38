//! `GET /health`: 200 when every component is healthy, 503 otherwise, with the same JSON
//! either way so a load balancer can act on the code and a person can read why.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use moeflow_api::ComponentHealth;
use serde::Serialize;

use crate::state::FrontendState;

#[derive(Debug, Serialize)]
pub struct HealthReport {
    pub healthy: bool,
    pub components: Vec<ComponentHealth>,
}

/// The handler.
pub async fn health(State(state): State<FrontendState>) -> (StatusCode, Json<HealthReport>) {
    let components = state.backend.health();
    let healthy = components.iter().all(|c| c.healthy);
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(HealthReport {
            healthy,
            components,
        }),
    )
}
