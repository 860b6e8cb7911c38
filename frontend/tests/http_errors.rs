//! Bad input, refusals, failures and disconnects over HTTP.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{guard, harness, ids};
use http_body_util::BodyExt;
use moeflow_api::{ComponentHealth, SubmitError};
use moeflow_frontend::{http_app, serve_http, FrontendState, Limits};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn assert_error(status: StatusCode, body: &Value, want: StatusCode, param: Option<&str>) {
    assert_eq!(status, want, "{body}");
    let e = &body["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(e["type"].is_string(), "{body}");
    assert!(e.get("code").is_some(), "{body}");
    assert_eq!(e["param"].as_str(), param, "{body}");
}

#[tokio::test]
async fn bad_requests_name_the_field() {
    let h = harness(common::config());
    let long_prompt: Vec<u32> = vec![1; 600];
    let cases: Vec<(&str, &str, Option<&str>)> = vec![
        // (path, body, param)
        ("/v1/completions", r#"{"prompt": "a", "max_tokens": "#, None),
        ("/v1/completions", r#"{"prompt": "a"} trailing"#, None),
        (
            "/v1/completions",
            r#"{"prompt": "a", "max_tokens": "ten"}"#,
            Some("max_tokens"),
        ),
        (
            "/v1/completions",
            r#"{"prompt": "a", "max_tokens": -1}"#,
            Some("max_tokens"),
        ),
        (
            "/v1/completions",
            r#"{"prompt": "a", "temperature": "hot"}"#,
            Some("temperature"),
        ),
        ("/v1/completions", r#"{"prompt": 5}"#, Some("prompt")),
        ("/v1/completions", r#"{"max_tokens": 5}"#, Some("prompt")),
        ("/v1/completions", r#"{"prompt": ""}"#, Some("prompt")),
        ("/v1/completions", r#"{"prompt": []}"#, Some("prompt")),
        (
            "/v1/completions",
            r#"{"prompt": ["a", "b"]}"#,
            Some("prompt"),
        ),
        ("/v1/completions", r#"{"prompt": [999999]}"#, Some("prompt")),
        (
            "/v1/completions",
            r#"{"prompt": "a", "max_tokens": 0}"#,
            Some("max_tokens"),
        ),
        (
            "/v1/completions",
            r#"{"prompt": "a", "max_tokens": 100000}"#,
            Some("max_tokens"),
        ),
        (
            "/v1/completions",
            r#"{"prompt": "a", "temperature": -0.5}"#,
            Some("temperature"),
        ),
        (
            "/v1/completions",
            r#"{"prompt": "a", "top_p": 0}"#,
            Some("top_p"),
        ),
        (
            "/v1/completions",
            r#"{"prompt": "a", "top_p": 1.5}"#,
            Some("top_p"),
        ),
        (
            "/v1/completions",
            r#"{"prompt": "a", "top_k": -5}"#,
            Some("top_k"),
        ),
        (
            "/v1/completions",
            r#"{"prompt": "a", "model": "gpt-4"}"#,
            Some("model"),
        ),
        ("/v1/completions", r#"{"prompt": "a", "n": 2}"#, Some("n")),
        (
            "/v1/completions",
            r#"{"prompt": "a", "stop": 3}"#,
            Some("stop"),
        ),
        (
            "/v1/completions",
            r#"{"prompt": "a", "logprobs": 50}"#,
            Some("logprobs"),
        ),
        (
            "/v1/completions",
            r#"{"prompt": "a", "echo": true}"#,
            Some("echo"),
        ),
        (
            "/v1/completions",
            r#"{"prompt": "a", "stream_options": {"include_usage": true}}"#,
            Some("stream_options"),
        ),
        (
            "/v1/chat/completions",
            r#"{"messages": []}"#,
            Some("messages"),
        ),
        (
            "/v1/chat/completions",
            r#"{"model": "x"}"#,
            Some("messages"),
        ),
        (
            "/v1/chat/completions",
            r#"{"messages": [{"role": "user"}], "max_tokens": 0}"#,
            Some("max_tokens"),
        ),
        (
            "/v1/chat/completions",
            r#"{"messages": [{"role": "user", "content": 1}]}"#,
            Some("messages[0].content"),
        ),
        (
            "/v1/chat/completions",
            r#"{"messages": [{"content": "a"}]}"#,
            Some("messages[0].role"),
        ),
        (
            "/v1/chat/completions",
            r#"{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#,
            Some("messages[0].content[0].type"),
        ),
        (
            "/v1/chat/completions",
            r#"{"messages": [{"role": "user", "content": "a"}], "max_completion_tokens": 0}"#,
            Some("max_completion_tokens"),
        ),
        (
            "/v1/chat/completions",
            r#"{"messages": [{"role": "user", "content": "a"}], "top_logprobs": 2}"#,
            Some("top_logprobs"),
        ),
        (
            "/v1/chat/completions",
            r#"{"messages": [{"role": "user", "content": "a"}], "temperature": -1}"#,
            Some("temperature"),
        ),
        (
            "/v1/chat/completions",
            r#"{"messages": [{"role": "user", "content": "a"}], "model": "other"}"#,
            Some("model"),
        ),
    ];
    for (path, body, param) in cases {
        let (status, resp) = h.post_raw(path, body.to_string(), &[]).await;
        assert_error(status, &resp, StatusCode::BAD_REQUEST, param);
    }
    // A prompt longer than the context (512) names the prompt.
    let (status, resp) = h
        .post("/v1/completions", &json!({"prompt": long_prompt}))
        .await;
    assert_error(status, &resp, StatusCode::BAD_REQUEST, Some("prompt"));
    let long_text = "word ".repeat(2000);
    let (status, resp) = h
        .post(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": long_text}]}),
        )
        .await;
    assert_error(status, &resp, StatusCode::BAD_REQUEST, Some("messages"));
    assert!(
        h.backend.requests().is_empty(),
        "nothing invalid reached the backend"
    );
}

#[tokio::test]
async fn oversized_body_is_413() {
    let mut h = harness(common::config());
    let state = h.state.clone().with_limits(Limits {
        max_body_bytes: 1024,
        ..Limits::default()
    });
    h.app = http_app(state);
    let prompt = "x".repeat(4096);
    let (status, body) = h.post("/v1/completions", &json!({"prompt": prompt})).await;
    assert_error(status, &body, StatusCode::PAYLOAD_TOO_LARGE, None);
}

#[tokio::test]
async fn refusals_map_to_status_codes() {
    let h = harness(common::config());
    let body = json!({"prompt": "a", "max_tokens": 1});
    let cases = [
        (
            SubmitError::Overloaded("queue full".into()),
            StatusCode::TOO_MANY_REQUESTS,
        ),
        (
            SubmitError::Unavailable("no group".into()),
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (SubmitError::ShuttingDown, StatusCode::SERVICE_UNAVAILABLE),
        (
            SubmitError::Invalid("max_tokens: too many".into()),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (error, want) in cases {
        h.backend.set_reject(Some(error));
        let (status, resp) = h.post("/v1/completions", &body).await;
        assert_error(status, &resp, want, None);
        let (status, resp) = h
            .post(
                "/v1/chat/completions",
                &json!({"messages": [{"role": "user", "content": "a"}], "stream": true}),
            )
            .await;
        assert_error(status, &resp, want, None);
    }
}

#[tokio::test]
async fn error_mid_stream_is_an_event_then_done() {
    let mut c = common::config();
    c.script = ids("one two three four five six");
    c.fail_after = Some(3);
    let h = harness(c);
    let data = h
        .stream(
            "/v1/completions",
            &json!({"prompt": "a", "max_tokens": 10, "stream": true}),
        )
        .await;
    let chunks = common::chunks(&data);
    let last = chunks.last().expect("chunks");
    assert!(last["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("fake worker failure")));
    assert_eq!(last["error"]["type"], "server_error");
    assert!(chunks[..chunks.len() - 1]
        .iter()
        .all(|c| c.get("error").is_none()));

    let data = h
        .stream(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "a"}], "stream": true}),
        )
        .await;
    let chunks = common::chunks(&data);
    assert!(chunks.last().expect("chunks")["error"].is_object());

    // Non-streaming: the whole request fails with the error shape.
    let (status, body) = h
        .post("/v1/completions", &json!({"prompt": "a", "max_tokens": 10}))
        .await;
    assert_error(status, &body, StatusCode::SERVICE_UNAVAILABLE, None);
}

#[tokio::test]
async fn dropped_stream_drops_the_backend_receiver() {
    let mut c = common::config();
    c.script = ids("one two three");
    c.stall_after = Some(2);
    let h = harness(c);
    let req = Request::post("/v1/completions")
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"prompt": "a", "max_tokens": 50, "stream": true}).to_string(),
        ))
        .expect("request");
    let resp = h.send(req).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    // Read until some token text arrived, then walk away.
    let mut seen = String::new();
    while !seen.contains("\"text\"") {
        let frame = guard("a frame", body.frame()).await;
        let frame = frame.expect("stream open").expect("frame");
        if let Some(data) = frame.data_ref() {
            seen.push_str(&String::from_utf8_lossy(data));
        }
    }
    assert!(h.backend.dropped().is_empty());
    drop(body);
    guard("the drop", h.backend.wait_until(|v| v.dropped.len() == 1)).await;
}

#[tokio::test]
async fn closed_connection_cancels_a_whole_response_request() {
    let mut c = common::config();
    c.stall_after = Some(1);
    let h = harness(c);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_http(listener, h.app.clone(), async move {
        let _ = stop_rx.await;
    }));
    let body = json!({"prompt": [1, 2, 3], "max_tokens": 10}).to_string();
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.expect("write");
    guard(
        "the request",
        h.backend.wait_until(|v| v.requests.len() == 1),
    )
    .await;
    drop(tcp);
    guard("the drop", h.backend.wait_until(|v| v.dropped.len() == 1)).await;
    let _ = stop_tx.send(());
    guard("shutdown", server)
        .await
        .expect("join")
        .expect("serve");
}

#[tokio::test]
async fn graceful_shutdown_lets_streams_finish() {
    let mut c = common::config();
    c.script = ids("one two three four");
    c.delay = Duration::from_millis(5);
    let h = harness(c);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_http(listener, h.app.clone(), async move {
        let _ = stop_rx.await;
    }));
    let body = json!({"prompt": "a", "max_tokens": 8, "stream": true}).to_string();
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.expect("write");
    guard(
        "the request",
        h.backend.wait_until(|v| v.requests.len() == 1),
    )
    .await;
    let _ = stop_tx.send(());
    let mut out = Vec::new();
    guard("the whole stream", tcp.read_to_end(&mut out))
        .await
        .expect("read");
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("data: [DONE]"), "{text}");
    assert!(text.contains("\"finish_reason\":\"length\""), "{text}");
    guard("shutdown", server)
        .await
        .expect("join")
        .expect("serve");
}

#[tokio::test]
async fn health_reports_degraded_components() {
    let h = harness(common::config());
    let (status, body) = h.get("/health").await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["healthy"], true);
    assert_eq!(v["components"][0]["name"], "fake");
    h.backend.set_health(vec![
        ComponentHealth {
            name: "prefill".into(),
            healthy: true,
            detail: "2/2 ranks".into(),
        },
        ComponentHealth {
            name: "decode".into(),
            healthy: false,
            detail: "rank 1 unreachable".into(),
        },
    ]);
    let (status, body) = h.get("/health").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["healthy"], false);
    assert_eq!(v["components"][1]["detail"], "rank 1 unreachable");
}

#[tokio::test]
async fn models_and_metrics_and_unknown_routes() {
    let h = harness(common::config());
    let (status, body) = h.get("/v1/models").await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "fake-moe");
    assert_eq!(v["data"][0]["object"], "model");
    assert_eq!(v["data"][0]["owned_by"], "moeflow");
    assert_eq!(v["data"][0]["max_model_len"], 512);
    assert!(v["data"][0]["created"].is_u64());

    // The served name can differ from the backend's.
    let state: FrontendState = h.state.clone().with_model_name("my-model");
    let renamed = http_app(state);
    let resp = tower::ServiceExt::oneshot(
        renamed,
        Request::get("/v1/models")
            .body(Body::empty())
            .expect("request"),
    )
    .await
    .expect("infallible");
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let v: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(v["data"][0]["id"], "my-model");

    let (status, _) = h
        .post("/v1/completions", &json!({"prompt": "a", "max_tokens": 3}))
        .await;
    assert_eq!(status, 200);
    let (status, text) = h.get("/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "moeflow:time_to_first_token_seconds_bucket",
        "moeflow:inter_token_latency_seconds_bucket",
        "moeflow:e2e_request_latency_seconds_bucket",
        "moeflow:prompt_tokens_total",
        "moeflow:generation_tokens_total",
        "moeflow:request_success_total{finished_reason=\"length\"}",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }

    let (status, body) = h.get("/v1/nothing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let v: Value = serde_json::from_str(&body).expect("json");
    assert!(v["error"]["message"].is_string());
}
