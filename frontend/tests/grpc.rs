//! The gRPC generation API against the fake backend.

mod common;

use common::{guard, harness, ids, tokenizer};
use futures_util::StreamExt;
use moeflow_api::{Backend, SubmitError};
use moeflow_frontend::grpc::GrpcFrontend;
use moeflow_frontend::grpc_service;
use moeflow_proto::v1 as pb;
use moeflow_proto::v1::generate_request::Prompt;
use moeflow_proto::v1::generate_response::Event;
use moeflow_proto::v1::generation_client::GenerationClient;
use moeflow_proto::v1::generation_server::Generation;
use tonic::{Code, Request};

fn text_request(text: &str, max_tokens: u32) -> pb::GenerateRequest {
    pb::GenerateRequest {
        request_id: String::new(),
        prompt: Some(Prompt::Text(text.into())),
        sampling: Some(pb::SamplingParams {
            temperature: Some(0.0),
            max_tokens,
            logprobs: true,
            ..Default::default()
        }),
        workload: "chat".into(),
    }
}

fn service(h: &common::Harness) -> GrpcFrontend {
    GrpcFrontend::new(h.state.clone())
}

/// Collects a Generate stream: (messages, terminal status if any).
async fn collect(
    stream: <GrpcFrontend as Generation>::GenerateStream,
) -> (Vec<pb::GenerateResponse>, Option<tonic::Status>) {
    let mut out = Vec::new();
    let mut stream = stream;
    while let Some(item) = guard("a message", stream.next()).await {
        match item {
            Ok(m) => out.push(m),
            Err(s) => return (out, Some(s)),
        }
    }
    (out, None)
}

#[tokio::test]
async fn generate_streams_tokens_and_usage() {
    let text = "The quick brown fox jumps.";
    let mut c = common::config();
    c.script = ids(text);
    let h = harness(c);
    let svc = service(&h);
    let resp = svc
        .generate(Request::new(text_request("Hello", 5)))
        .await
        .expect("accepted");
    let (msgs, status) = collect(resp.into_inner()).await;
    assert!(status.is_none());
    assert!(msgs[0].request_id.starts_with("gen-"));
    assert!(msgs[1..].iter().all(|m| m.request_id.is_empty()));
    let mut out = String::new();
    let mut ids_out = Vec::new();
    for m in &msgs[..msgs.len() - 1] {
        let Some(Event::Token(t)) = &m.event else {
            panic!("expected a token: {m:?}")
        };
        out.push_str(&t.text);
        ids_out.push(t.id);
        assert!(t.logprob < 0.0);
    }
    assert_eq!(ids_out, ids(text)[..5]);
    assert_eq!(out, tokenizer().decode(&ids(text)[..5]).expect("decode"));
    let Some(Event::Finished(f)) = &msgs.last().expect("last").event else {
        panic!("expected finished")
    };
    assert_eq!(f.reason, "length");
    let usage = f.usage.expect("usage");
    assert_eq!(usage.completion_tokens, 5);
    assert_eq!(
        usage.prompt_tokens as usize,
        tokenizer().encode("Hello").expect("encode").len()
    );
    let sent = &h.backend.requests()[0];
    assert_eq!(sent.workload.as_deref(), Some("chat"));
    assert_eq!(sent.sampling.temperature, 0.0);
}

#[tokio::test]
async fn generate_reports_top_logprobs() {
    let text = "The quick brown fox jumps.";
    let mut c = common::config();
    c.script = ids(text);
    let h = harness(c);
    let mut req = text_request("Hello", 3);
    if let Some(s) = req.sampling.as_mut() {
        s.top_logprobs = 2;
    }
    let resp = service(&h)
        .generate(Request::new(req))
        .await
        .expect("accepted");
    let (msgs, status) = collect(resp.into_inner()).await;
    assert!(status.is_none());
    assert_eq!(h.backend.requests()[0].sampling.top_logprobs, 2);
    let tokens: Vec<&pb::Token> = msgs
        .iter()
        .filter_map(|m| match &m.event {
            Some(Event::Token(t)) => Some(t),
            _ => None,
        })
        .collect();
    assert_eq!(tokens.len(), 3);
    for (i, t) in tokens.iter().enumerate() {
        let want: Vec<(u32, f32)> =
            moeflow_frontend::testing::fake_top(t.id, i, 2, h.backend.model_info().vocab_size);
        let got: Vec<(u32, f32)> = t.top_logprobs.iter().map(|a| (a.id, a.logprob)).collect();
        assert_eq!(got, want);
        for a in &t.top_logprobs {
            assert_eq!(a.text, tokenizer().decode(&[a.id]).expect("decode"));
        }
    }
}

#[tokio::test]
async fn generate_with_ids_and_stop_string() {
    let text = "red green blue STOP yellow";
    let mut c = common::config();
    c.script = ids(text);
    let h = harness(c);
    let svc = service(&h);
    let mut req = text_request("", 50);
    req.prompt = Some(Prompt::TokenIds(pb::TokenIds { ids: vec![1, 2, 3] }));
    req.request_id = "mine-1".into();
    if let Some(s) = req.sampling.as_mut() {
        s.stop = vec![" STOP".into()];
    }
    let resp = svc.generate(Request::new(req)).await.expect("accepted");
    let (msgs, status) = collect(resp.into_inner()).await;
    assert!(status.is_none());
    assert_eq!(msgs[0].request_id, "mine-1");
    let text_out: String = msgs
        .iter()
        .filter_map(|m| match &m.event {
            Some(Event::Token(t)) => Some(t.text.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(text_out, "red green blue");
    let Some(Event::Finished(f)) = &msgs.last().expect("last").event else {
        panic!("expected finished")
    };
    assert_eq!(f.reason, "stop");
}

#[tokio::test]
async fn generate_rejects_bad_input_naming_the_field() {
    let h = harness(common::config());
    let svc = service(&h);
    let mut cases = Vec::new();
    let mut none = text_request("a", 5);
    none.prompt = None;
    cases.push((none, "prompt"));
    cases.push((text_request("", 5), "prompt.text"));
    let mut bad_id = text_request("a", 5);
    bad_id.prompt = Some(Prompt::TokenIds(pb::TokenIds {
        ids: vec![u32::MAX],
    }));
    cases.push((bad_id, "prompt"));
    let mut top_p = text_request("a", 5);
    if let Some(s) = top_p.sampling.as_mut() {
        s.top_p = Some(2.0);
    }
    cases.push((top_p, "sampling.top_p"));
    let mut temp = text_request("a", 5);
    if let Some(s) = temp.sampling.as_mut() {
        s.temperature = Some(-1.0);
    }
    cases.push((temp, "sampling.temperature"));
    cases.push((text_request("a", 100_000), "sampling.max_tokens"));
    let mut too_many = text_request("a", 5);
    if let Some(s) = too_many.sampling.as_mut() {
        s.top_logprobs = 21;
    }
    cases.push((too_many, "sampling.top_logprobs"));
    let mut without = text_request("a", 5);
    if let Some(s) = without.sampling.as_mut() {
        s.top_logprobs = 2;
        s.logprobs = false;
    }
    cases.push((without, "sampling.top_logprobs"));
    for (req, field) in cases {
        let status = svc
            .generate(Request::new(req))
            .await
            .err()
            .expect("rejected");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with(field), "{field}: {status:?}");
    }
    assert!(h.backend.requests().is_empty());
}

#[tokio::test]
async fn generate_refusals_and_failures_are_statuses() {
    let mut c = common::config();
    c.script = ids("a b c d e f");
    c.fail_after = Some(2);
    let h = harness(c);
    let svc = service(&h);
    let resp = svc
        .generate(Request::new(text_request("x", 10)))
        .await
        .expect("accepted");
    let (msgs, status) = collect(resp.into_inner()).await;
    let status = status.expect("a terminal status");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("fake worker failure"));
    assert_eq!(msgs.len(), 2);

    for (error, code) in [
        (
            SubmitError::Overloaded("full".into()),
            Code::ResourceExhausted,
        ),
        (SubmitError::Unavailable("down".into()), Code::Unavailable),
        (SubmitError::ShuttingDown, Code::Unavailable),
    ] {
        h.backend.set_reject(Some(error));
        let status = svc
            .generate(Request::new(text_request("x", 10)))
            .await
            .err()
            .expect("rejected");
        assert_eq!(status.code(), code);
    }
}

#[tokio::test]
async fn abort_and_cancellation() {
    let mut c = common::config();
    c.script = ids("one two three");
    c.stall_after = Some(2);
    let h = harness(c);
    let svc = service(&h);

    // Abort by id: the stream ends with reason "abort".
    let mut req = text_request("x", 10);
    req.request_id = "to-abort".into();
    let mut stream = svc
        .generate(Request::new(req))
        .await
        .expect("ok")
        .into_inner();
    let first = guard("a token", stream.next())
        .await
        .expect("item")
        .expect("ok");
    assert!(matches!(first.event, Some(Event::Token(_))));
    let found = svc
        .abort(Request::new(pb::AbortRequest {
            request_id: "to-abort".into(),
        }))
        .await
        .expect("ok")
        .into_inner()
        .found;
    assert!(found);
    let (rest, status) = collect(stream).await;
    assert!(status.is_none());
    let Some(Event::Finished(f)) = &rest.last().expect("last").event else {
        panic!("expected finished: {rest:?}")
    };
    assert_eq!(f.reason, "abort");
    let unknown = svc
        .abort(Request::new(pb::AbortRequest {
            request_id: "nope".into(),
        }))
        .await
        .expect("ok")
        .into_inner();
    assert!(!unknown.found);

    // Dropping the response stream drops the backend's receiver.
    let mut stream = svc
        .generate(Request::new(text_request("x", 10)))
        .await
        .expect("ok")
        .into_inner();
    guard("a token", stream.next())
        .await
        .expect("item")
        .expect("ok");
    drop(stream);
    guard("the drop", h.backend.wait_until(|v| v.dropped.len() == 1)).await;
}

#[tokio::test]
async fn over_loopback_with_info_health_and_loads() {
    let mut c = common::config();
    c.script = ids("hello there");
    let h = harness(c);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(grpc_service(h.state.clone()))
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop_rx.await;
            }),
    );
    let mut client = guard(
        "connect",
        GenerationClient::connect(format!("http://{addr}")),
    )
    .await
    .expect("connect");
    let info = client
        .model_info(pb::ModelInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert_eq!(info.model_id, "fake-moe");
    assert_eq!(info.max_context, 512);
    let health = client
        .health(pb::HealthRequest {})
        .await
        .expect("health")
        .into_inner();
    assert!(health.healthy);
    assert_eq!(health.groups[0].name, "fake");
    let loads = client
        .loads(pb::LoadsRequest {})
        .await
        .expect("loads")
        .into_inner();
    assert_eq!(loads.workers[0].group, "fake");

    let mut stream = client
        .generate(text_request("hi", 3))
        .await
        .expect("generate")
        .into_inner();
    let mut n = 0;
    let mut finished = None;
    while let Some(m) = guard("a message", stream.message()).await.expect("ok") {
        match m.event {
            Some(Event::Token(_)) => n += 1,
            Some(Event::Finished(f)) => finished = Some(f),
            None => {}
        }
    }
    assert_eq!(n, 3);
    assert_eq!(finished.expect("finished").reason, "length");

    let status = client
        .generate(pb::GenerateRequest::default())
        .await
        .expect_err("rejected");
    assert_eq!(status.code(), Code::InvalidArgument);
    let _ = stop_tx.send(());
    guard("shutdown", server)
        .await
        .expect("join")
        .expect("serve");
}
