//! Shared test setup: a tiny checkpoint's tokenizer, a fake backend, and HTTP helpers that
//! drive the axum app in process.

#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use moeflow_frontend::testing::{tiny_tokenizer, FakeBackend, FakeConfig};
use moeflow_frontend::{http_app, FrontendState};
use moeflow_tokenizer::Tokenizer;
use serde_json::Value;
use tower::ServiceExt;

/// Bound on waits that would otherwise hang a broken test (not a timing assertion).
pub const HANG_GUARD: Duration = Duration::from_secs(20);

/// The tiny checkpoint's tokenizer, written once per test binary.
pub fn tokenizer() -> Arc<Tokenizer> {
    static TOK: OnceLock<Arc<Tokenizer>> = OnceLock::new();
    TOK.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("frontend-tiny-{}", std::process::id()));
        match tiny_tokenizer(&dir) {
            Ok(t) => t,
            Err(e) => panic!("writing the tiny checkpoint failed: {e}"),
        }
    })
    .clone()
}

/// A fake config over the tiny tokenizer's vocabulary.
pub fn config() -> FakeConfig {
    FakeConfig::new(tokenizer().vocab_size() as u32)
}

/// The ids of `text` (no special tokens), for scripting the fake.
pub fn ids(text: &str) -> Vec<u32> {
    tokenizer().encode_raw(text).expect("encode")
}

pub struct Harness {
    pub backend: Arc<FakeBackend>,
    pub state: FrontendState,
    pub app: Router,
}

pub fn harness(config: FakeConfig) -> Harness {
    let backend = FakeBackend::new(config);
    let state = FrontendState::new(backend.clone(), tokenizer());
    let app = http_app(state.clone());
    Harness {
        backend,
        state,
        app,
    }
}

/// Waits for `f`, failing the test instead of hanging.
pub async fn guard<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(HANG_GUARD, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

impl Harness {
    pub async fn send(&self, req: Request<Body>) -> axum::response::Response {
        self.app.clone().oneshot(req).await.expect("infallible")
    }

    /// POSTs JSON; returns the status and the parsed body.
    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.post_raw(path, body.to_string(), &[]).await
    }

    pub async fn post_raw(
        &self,
        path: &str,
        body: String,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let mut req = Request::post(path).header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self
            .send(req.body(Body::from(body)).expect("request"))
            .await;
        let status = resp.status();
        let bytes = guard("body", resp.into_body().collect())
            .await
            .expect("body")
            .to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
        (status, value)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, String) {
        let resp = self
            .send(Request::get(path).body(Body::empty()).expect("request"))
            .await;
        let status = resp.status();
        let bytes = guard("body", resp.into_body().collect())
            .await
            .expect("body")
            .to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    /// POSTs a streaming request; returns the `data:` payloads of the SSE events.
    pub async fn stream(&self, path: &str, body: &Value) -> Vec<String> {
        let req = Request::post(path)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .expect("request");
        let resp = self.send(req).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("text/event-stream")
        );
        let bytes = guard("stream", resp.into_body().collect())
            .await
            .expect("body")
            .to_bytes();
        sse_data(&String::from_utf8_lossy(&bytes))
    }
}

/// The `data:` payloads of an SSE text.
pub fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

/// The JSON chunks of a stream (all but `[DONE]`), checking that `[DONE]` is last.
pub fn chunks(data: &[String]) -> Vec<Value> {
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("bad chunk {d}: {e}")))
        .collect()
}
