//! The load generator against a stub server with injected delays and faults: the measured
//! latencies must reflect the injected delays, and every fault must be counted by kind and
//! end the run in bounded time.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{closed_port_url, start, Behaviour, Stub};
use moeflow_loadgen::arrivals::schedule;
use moeflow_loadgen::dataset::random_prompts;
use moeflow_loadgen::{
    fetch_model_name, run, run_sweep, BenchConfig, Endpoint, GoodputLimits, LoadgenError,
    RequestRate, Sweep,
};

fn config(stub: &Stub) -> BenchConfig {
    let mut c = BenchConfig::new(&stub.base_url, "stub-model");
    c.warmup_requests = 0;
    c.timeout = Duration::from_secs(20);
    c
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::test]
async fn slow_first_token_shows_in_ttft() {
    let delay = Duration::from_millis(300);
    let stub = start(Behaviour {
        first_token_delay: delay,
        ..Behaviour::default()
    })
    .await;
    let mut c = config(&stub);
    c.max_concurrency = Some(2);
    let r = run(&c, &random_prompts(4, 8, 4, 0.0, 0).unwrap())
        .await
        .unwrap();
    assert_eq!((r.completed, r.failed), (4, 0), "{:?}", r.errors);
    assert!(r.ttft.count == 4);
    // Never below the injected delay; above it only by scheduling noise (generous bound).
    assert!(r.ttft.median_ms >= ms(delay), "{}", r.ttft.median_ms);
    assert!(r.ttft.p99_ms < ms(delay) + 1500.0, "{}", r.ttft.p99_ms);
    assert!(r.e2el.mean_ms >= r.ttft.mean_ms);
    assert!(r.is_success());
}

#[tokio::test]
async fn inter_token_delay_shows_in_itl_and_tpot() {
    let gap = Duration::from_millis(40);
    let stub = start(Behaviour {
        inter_token_delay: gap,
        ..Behaviour::default()
    })
    .await;
    let mut c = config(&stub);
    c.max_concurrency = Some(2);
    let r = run(&c, &random_prompts(4, 8, 6, 0.0, 0).unwrap())
        .await
        .unwrap();
    assert_eq!(r.completed, 4, "{:?}", r.errors);
    assert_eq!(r.itl.count, 4 * 5);
    assert_eq!(r.output_tokens_per_chunk, Some(1.0));
    // Client-side gaps can shrink when one chunk is delivered late and the next on time, so
    // the median (not every gap) is held to the injected delay, with 10% for that jitter.
    assert!(r.itl.median_ms >= 0.9 * ms(gap), "{}", r.itl.median_ms);
    assert!(r.tpot.mean_ms >= 0.9 * ms(gap), "{}", r.tpot.mean_ms);
    assert!(r.tpot.mean_ms < ms(gap) + 500.0, "{}", r.tpot.mean_ms);
    assert!(r.ttft.mean_ms < ms(gap) * 5.0 + 1000.0);
}

#[tokio::test]
async fn server_usage_counts_are_reported_and_request_options_sent() {
    let stub = start(Behaviour::default()).await;
    let mut c = config(&stub);
    c.ignore_eos = true;
    let r = run(&c, &random_prompts(5, 8, 3, 0.0, 0).unwrap())
        .await
        .unwrap();
    assert_eq!(r.completed, 5);
    // The stub counts one more prompt token than words (a pretend BOS): the server's count wins.
    assert_eq!(r.total_input_tokens, 5 * 9);
    assert_eq!(r.total_output_tokens, 5 * 3);
    assert!(r.input_tokens_from_server && r.output_tokens_from_server);
    let body = stub.counters.last_body.lock().unwrap().clone().unwrap();
    assert_eq!(body["ignore_eos"], true);
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);
    assert_eq!(body["max_tokens"], 3);
    assert_eq!(body["model"], "stub-model");
    let j = r.to_json();
    assert_eq!(j["completed"], 5);
    assert_eq!(j["errors"], serde_json::json!({}));
}

#[tokio::test]
async fn chat_ttft_waits_for_content_not_the_role_chunk() {
    let delay = Duration::from_millis(250);
    let stub = start(Behaviour {
        first_token_delay: delay,
        ..Behaviour::default()
    })
    .await;
    let mut c = config(&stub);
    c.endpoint = Endpoint::Chat;
    let r = run(&c, &random_prompts(3, 8, 4, 0.0, 0).unwrap())
        .await
        .unwrap();
    assert_eq!(r.completed, 3, "{:?}", r.error_examples);
    assert!(r.ttft.median_ms >= ms(delay), "{}", r.ttft.median_ms);
    assert_eq!(r.total_output_tokens, 3 * 4);
    let body = stub.counters.last_body.lock().unwrap().clone().unwrap();
    assert_eq!(body["messages"][0]["role"], "user");
}

#[tokio::test]
async fn unstreamed_requests_have_e2e_but_no_ttft() {
    let stub = start(Behaviour::default()).await;
    let mut c = config(&stub);
    c.stream = false;
    let r = run(&c, &random_prompts(3, 8, 4, 0.0, 0).unwrap())
        .await
        .unwrap();
    assert_eq!(r.completed, 3);
    assert_eq!((r.ttft.count, r.e2el.count), (0, 3));
    assert_eq!(r.output_tokens_per_chunk, None);
    assert_eq!(r.total_output_tokens, 12);
}

#[tokio::test]
async fn dropped_streams_count_as_broken() {
    let stub = start(Behaviour {
        drop_after: Some(2),
        inter_token_delay: Duration::from_millis(5),
        ..Behaviour::default()
    })
    .await;
    let r = run(&config(&stub), &random_prompts(4, 8, 8, 0.0, 0).unwrap())
        .await
        .unwrap();
    assert_eq!(r.completed, 0);
    assert_eq!(r.errors.get("broken_stream"), Some(&4), "{:?}", r.errors);
    assert!(!r.is_success());
}

#[tokio::test]
async fn error_events_count_as_sse_errors() {
    let stub = start(Behaviour {
        error_event_after: Some(1),
        ..Behaviour::default()
    })
    .await;
    let r = run(&config(&stub), &random_prompts(3, 8, 4, 0.0, 0).unwrap())
        .await
        .unwrap();
    assert_eq!(r.errors.get("sse_error"), Some(&3), "{:?}", r.errors);
    assert_eq!(
        r.error_examples.get("sse_error").map(String::as_str),
        Some("stub failed mid-stream")
    );
}

#[tokio::test]
async fn error_statuses_are_counted_by_code() {
    let stub = start(Behaviour {
        statuses: vec![200, 500, 429],
        ..Behaviour::default()
    })
    .await;
    let mut c = config(&stub);
    c.max_concurrency = Some(3);
    let r = run(&c, &random_prompts(9, 8, 2, 0.0, 0).unwrap())
        .await
        .unwrap();
    assert_eq!(r.completed, 3);
    assert_eq!(r.errors.get("http_500"), Some(&3), "{:?}", r.errors);
    assert_eq!(r.errors.get("http_429"), Some(&3));
    assert!(r.error_examples["http_429"].contains("stub says 429"));
    assert!(
        r.aborted.is_none(),
        "an answering server is not a gone server"
    );
    assert_eq!(r.to_json()["errors"]["http_500"], 3);
}

#[tokio::test]
async fn a_hung_server_times_out_and_ends_the_run() {
    let stub = start(Behaviour {
        hang: true,
        ..Behaviour::default()
    })
    .await;
    let mut c = config(&stub);
    c.timeout = Duration::from_millis(300);
    c.max_concurrency = Some(2);
    let t = Instant::now();
    let r = run(&c, &random_prompts(20, 8, 4, 0.0, 0).unwrap())
        .await
        .unwrap();
    // Three timeouts in a row end the run long before 20 x 300 ms / 2.
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(
        r.errors.get("timeout").is_some_and(|&n| n >= 3),
        "{:?}",
        r.errors
    );
    assert!(r.aborted.is_some());
    assert!(r.not_sent > 0);
    assert!(!r.is_success());
}

#[tokio::test]
async fn a_hung_server_fails_the_warmup() {
    let stub = start(Behaviour {
        hang: true,
        ..Behaviour::default()
    })
    .await;
    let mut c = config(&stub);
    c.timeout = Duration::from_millis(300);
    c.warmup_requests = 1;
    let t = Instant::now();
    let e = run(&c, &random_prompts(5, 8, 4, 0.0, 0).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(e, LoadgenError::Warmup(ref m) if m.starts_with("timeout")),
        "{e}"
    );
    assert!(t.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn no_server_ends_the_run_with_connect_errors() {
    let mut c = BenchConfig::new(closed_port_url(), "m");
    c.warmup_requests = 0;
    c.max_concurrency = Some(1);
    let r = run(&c, &random_prompts(50, 8, 4, 0.0, 0).unwrap())
        .await
        .unwrap();
    assert_eq!(r.errors.get("connect"), Some(&3), "{:?}", r.errors);
    assert!(r.aborted.is_some());
    assert_eq!(r.not_sent, 47);
}

#[tokio::test]
async fn the_duration_bounds_the_run() {
    let stub = start(Behaviour {
        inter_token_delay: Duration::from_millis(100),
        ..Behaviour::default()
    })
    .await;
    let mut c = config(&stub);
    c.max_concurrency = Some(2);
    c.duration = Some(Duration::from_millis(700));
    let t = Instant::now();
    // Each request takes about 2 s: none can finish within the duration.
    let r = run(&c, &random_prompts(50, 8, 20, 0.0, 0).unwrap())
        .await
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(
        (r.completed, r.failed, r.cancelled, r.not_sent),
        (0, 0, 2, 48)
    );
    assert!(
        (r.duration.as_secs_f64() - 0.7).abs() < 0.2,
        "{:?}",
        r.duration
    );
    assert!(r.aborted.is_none());
}

#[tokio::test]
async fn the_concurrency_limit_holds() {
    let stub = start(Behaviour {
        inter_token_delay: Duration::from_millis(10),
        ..Behaviour::default()
    })
    .await;
    let mut c = config(&stub);
    c.max_concurrency = Some(3);
    let r = run(&c, &random_prompts(12, 8, 4, 0.0, 0).unwrap())
        .await
        .unwrap();
    assert_eq!(r.completed, 12);
    let max = stub.counters.max_in_flight.load(Ordering::SeqCst);
    assert!((1..=3).contains(&max), "{max}");
}

#[tokio::test]
async fn poisson_arrivals_follow_the_schedule() {
    let stub = start(Behaviour::default()).await;
    let mut c = config(&stub);
    c.request_rate = RequestRate::PerSecond(20.0);
    c.seed = 3;
    let r = run(&c, &random_prompts(10, 8, 2, 0.0, 0).unwrap())
        .await
        .unwrap();
    assert_eq!(r.completed, 10);
    let last_release = schedule(10, RequestRate::PerSecond(20.0), 3)[9];
    assert!(
        r.duration >= last_release,
        "{:?} < {last_release:?}",
        r.duration
    );
    assert_eq!(r.to_json()["request_rate"], 20.0);
}

#[tokio::test]
async fn goodput_counts_requests_within_the_limits() {
    let stub = start(Behaviour {
        first_token_delay: Duration::from_millis(200),
        ..Behaviour::default()
    })
    .await;
    let mut c = config(&stub);
    c.goodput = GoodputLimits::parse(&["ttft:50"]).unwrap();
    let r = run(&c, &random_prompts(3, 8, 2, 0.0, 0).unwrap())
        .await
        .unwrap();
    assert_eq!((r.completed, r.good_requests), (3, Some(0)));
    c.goodput = GoodputLimits::parse(&["ttft:60000", "tpot:60000"]).unwrap();
    let r = run(&c, &random_prompts(3, 8, 2, 0.0, 0).unwrap())
        .await
        .unwrap();
    assert_eq!(r.good_requests, Some(3));
    assert!(r.request_goodput().is_some_and(|g| g > 0.0));
}

#[tokio::test]
async fn a_sweep_runs_every_point_and_the_model_is_discovered() {
    let stub = start(Behaviour::default()).await;
    let model = fetch_model_name(&stub.base_url, None, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(model, "stub-model");
    let mut c = config(&stub);
    c.model = model;
    c.warmup_requests = 1;
    let mut seen = Vec::new();
    let reports = run_sweep(
        &c,
        &random_prompts(4, 8, 2, 0.0, 0).unwrap(),
        &Sweep::Concurrency(vec![1, 4]),
        |r| seen.push(r.max_concurrency),
    )
    .await
    .unwrap();
    assert_eq!(seen, vec![Some(1), Some(4)]);
    assert!(reports.iter().all(|r| r.completed == 4));
    // Two points of 4 requests, each after one warmup request.
    assert_eq!(stub.counters.requests.load(Ordering::SeqCst), 10);
}
