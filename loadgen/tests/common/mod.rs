//! A small OpenAI-compatible server that misbehaves on purpose, for testing the load
//! generator's measurements and its error handling against known, injected behaviour.

#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// What the stub does with each request.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Before the first content chunk (a chat stream's role chunk comes at once).
    pub first_token_delay: Duration,
    /// Between content chunks.
    pub inter_token_delay: Duration,
    /// Break the connection after this many content chunks (no `[DONE]`).
    pub drop_after: Option<usize>,
    /// Send an error event after this many content chunks, then `[DONE]`.
    pub error_event_after: Option<usize>,
    /// Status of request k is `statuses[k % len]` (200: answer normally); empty: all 200.
    pub statuses: Vec<u16>,
    /// Accept the request and never answer.
    pub hang: bool,
}

#[derive(Debug, Default)]
pub struct Counters {
    pub requests: AtomicUsize,
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    pub last_body: Mutex<Option<Value>>,
}

pub struct Stub {
    pub base_url: String,
    pub counters: Arc<Counters>,
}

#[derive(Clone)]
struct AppState {
    behaviour: Arc<Behaviour>,
    counters: Arc<Counters>,
}

/// Starts the stub on 127.0.0.1 (a free port); it runs until the test's runtime ends.
pub async fn start(behaviour: Behaviour) -> Stub {
    let counters = Arc::new(Counters::default());
    let state = AppState {
        behaviour: Arc::new(behaviour),
        counters: Arc::clone(&counters),
    };
    let app = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Stub {
        base_url: format!("http://{addr}"),
        counters,
    }
}

/// A base URL where nothing listens.
pub fn closed_port_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    format!("http://{addr}")
}

async fn models() -> Json<Value> {
    Json(json!({"object": "list", "data": [{"id": "stub-model", "object": "model"}]}))
}

async fn completions(State(s): State<AppState>, Json(body): Json<Value>) -> Response {
    answer(s, body, false).await
}

async fn chat(State(s): State<AppState>, Json(body): Json<Value>) -> Response {
    answer(s, body, true).await
}

/// Decrements the in-flight count when the response is done (or dropped).
struct InFlight(Arc<Counters>);

impl InFlight {
    fn new(c: &Arc<Counters>) -> Self {
        let now = c.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        c.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(Arc::clone(c))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn answer(s: AppState, body: Value, chat: bool) -> Response {
    let k = s.counters.requests.fetch_add(1, Ordering::SeqCst);
    *s.counters.last_body.lock().expect("lock") = Some(body.clone());
    let guard = InFlight::new(&s.counters);
    let b = Arc::clone(&s.behaviour);
    if b.hang {
        // `guard` stays alive (in flight) until the client gives up and the handler is dropped.
        std::future::pending::<()>().await;
    }
    if !b.statuses.is_empty() {
        let code = b.statuses[k % b.statuses.len()];
        if code != 200 {
            let status = StatusCode::from_u16(code).expect("status");
            let err = json!({"error": {"message": format!("stub says {code}"), "code": code}});
            return (status, Json(err)).into_response();
        }
    }
    let tokens = body["max_tokens"].as_u64().unwrap_or(16) as usize;
    let prompt_tokens = if chat {
        body["messages"][0]["content"].as_str().unwrap_or("")
    } else {
        body["prompt"].as_str().unwrap_or("")
    }
    .split_whitespace()
    .count()
        + 1; // a pretend BOS token, so tests can tell server counts from estimates
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": tokens,
                       "total_tokens": prompt_tokens + tokens});
    let piece = move |i: usize| {
        if chat {
            json!({"choices": [{"index": 0, "delta": {"content": format!("t{i} ")}}]})
        } else {
            json!({"choices": [{"index": 0, "text": format!("t{i} ")}]})
        }
    };
    if body["stream"] != json!(true) {
        tokio::time::sleep(b.first_token_delay + b.inter_token_delay * tokens as u32).await;
        let text: String = (0..tokens).map(|i| format!("t{i} ")).collect();
        let choice = if chat {
            json!({"index": 0, "message": {"role": "assistant", "content": text}})
        } else {
            json!({"index": 0, "text": text})
        };
        return Json(json!({"choices": [choice], "usage": usage})).into_response();
    }
    let include_usage = body["stream_options"]["include_usage"] == json!(true);
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        let _guard = guard;
        let send = |v: String| {
            let tx = tx.clone();
            async move { tx.send(Ok(Bytes::from(v))).await.is_ok() }
        };
        let event = |v: &Value| format!("data: {v}\n\n");
        if chat
            && !send(event(
                &json!({"choices": [{"index": 0, "delta": {"role": "assistant"}}]}),
            ))
            .await
        {
            return;
        }
        tokio::time::sleep(b.first_token_delay).await;
        for i in 0..tokens {
            if i > 0 {
                tokio::time::sleep(b.inter_token_delay).await;
            }
            if b.drop_after == Some(i) {
                let _ = tx
                    .send(Err(std::io::Error::other("dropped on purpose")))
                    .await;
                return;
            }
            if b.error_event_after == Some(i) {
                let err = json!({"error": {"message": "stub failed mid-stream", "code": 500}});
                let _ = send(event(&err)).await;
                let _ = send("data: [DONE]\n\n".into()).await;
                return;
            }
            if !send(event(&piece(i))).await {
                return;
            }
        }
        if include_usage && !send(event(&json!({"choices": [], "usage": usage}))).await {
            return;
        }
        let _ = send("data: [DONE]\n\n".into()).await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .expect("response")
}
