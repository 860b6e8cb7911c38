//! The OpenAI-compatible HTTP API.
//!
//! | route | handler |
//! |---|---|
//! | `POST /v1/completions` | [`completions`] |
//! | `POST /v1/chat/completions` | [`chat`] |
//! | `GET /v1/models` | [`models`] |
//! | `GET /health` | [`health`] |
//! | `GET /metrics` | [`metrics`] |

pub mod chat;
pub mod completions;
pub mod error;
pub mod health;
pub mod json;
pub mod logprobs;
pub mod metrics;
pub mod models;
pub mod params;
pub mod sse;
pub mod usage;

use std::future::Future;

use axum::extract::DefaultBodyLimit;
use axum::http::Uri;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use tokio::net::TcpListener;

use crate::state::FrontendState;
use error::ApiError;

/// The HTTP application. Installs the process's Prometheus recorder if that has not happened
/// yet (see [`crate::metrics::install_recorder`]).
pub fn http_app(state: FrontendState) -> Router {
    let handle = crate::metrics::install_recorder();
    let body_limit = state.limits.max_body_bytes;
    Router::new()
        .route("/v1/completions", post(completions::completions))
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/models", get(models::list_models))
        .route("/health", get(health::health))
        .route(
            "/metrics",
            get(move || async move { metrics::render(&handle) }),
        )
        .fallback(|uri: Uri| async move { ApiError::not_found(uri.path()).into_response() })
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// Serves `app` on `listener` until `shutdown` resolves; then stops accepting and waits for
/// in-flight requests, streams included, to finish (the backend drains them).
///
/// Nagle's algorithm is turned off on every connection: SSE writes one small event per
/// token, and delayed ACKs would otherwise hold tokens back by tens of milliseconds.
pub async fn serve_http<F>(listener: TcpListener, app: Router, shutdown: F) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY not set: {e}");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
