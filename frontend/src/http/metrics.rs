//! `GET /metrics`: everything recorded through the `metrics` facade in this process, in the
//! Prometheus text format.

use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::PrometheusHandle;

/// The content type Prometheus expects for the text format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders the recorder's current state.
pub fn render(handle: &PrometheusHandle) -> Response {
    ([(CONTENT_TYPE, TEXT_FORMAT)], handle.render()).into_response()
}
