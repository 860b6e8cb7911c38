//! A whole run: warm up, release requests on the arrival schedule within the concurrency
//! limit, collect their records, and stop after the last prompt, at the deadline, or when the
//! server stops answering, whichever comes first. Every request has its own timeout, so every
//! run ends within `arrivals + timeout` even against a server that hangs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::task::JoinSet;

use crate::arrivals;
use crate::config::{BenchConfig, RequestRate};
use crate::dataset::Prompt;
use crate::error::LoadgenError;
use crate::http::{read_body, HttpClient};
use crate::progress::Progress;
use crate::record::{Failure, FailureKind, RequestRecord};
use crate::report::{BenchReport, RunEnd};
use crate::request::{self, PreparedRequest};

/// Unanswered requests in a row (timeouts, refused or dropped connections, with no success
/// between) after which the server is taken as gone and the run ends: the concurrency limit,
/// so that one wave of requests in flight together can fail, within `[MIN, MAX]`.
const ABORT_MIN: usize = 3;
const ABORT_MAX: usize = 64;

/// Runs `prompts` against the server as `config` says and summarises the run.
///
/// Failed requests are counted in the report, not returned as errors; `Err` means the run
/// could not start (bad settings, or a warmup request that failed).
pub async fn run(config: &BenchConfig, prompts: &[Prompt]) -> Result<BenchReport, LoadgenError> {
    config.validate()?;
    let client = HttpClient::new(&config.base_url, config.api_key.as_deref(), config.timeout)?;
    let uri = client.uri(config.endpoint.path())?;
    let requests: Arc<Vec<PreparedRequest>> = Arc::new(
        prompts
            .iter()
            .map(|p| PreparedRequest::new(config, uri.clone(), p))
            .collect(),
    );
    warmup(&client, config, &requests).await?;

    let n = requests.len();
    let offsets = arrivals::schedule(n, config.request_rate, config.seed);
    let limit = config.max_concurrency.unwrap_or(usize::MAX);
    let abort_after = limit.min(n).clamp(ABORT_MIN, ABORT_MAX);
    let mut progress = Progress::new(config.show_progress, n);
    let mut in_flight: JoinSet<RequestRecord> = JoinSet::new();
    let mut records = Vec::with_capacity(n);
    let mut next = 0;
    let mut unanswered = 0;
    let mut end = RunEnd::default();

    let start = Instant::now();
    let deadline = config.duration.map(|d| start + d);
    loop {
        if next >= n && in_flight.is_empty() {
            break;
        }
        let may_send = next < n && in_flight.len() < limit;
        let release_at = start + offsets.get(next).copied().unwrap_or_default();
        tokio::select! {
            biased;
            _ = until(deadline) => break,
            Some(joined) = in_flight.join_next(), if !in_flight.is_empty() => {
                let record = joined.unwrap_or_else(|e| {
                    Err(Failure::new(FailureKind::BadResponse, format!("request task failed: {e}")))
                });
                match &record {
                    Err(f) if f.kind.is_unanswered() => unanswered += 1,
                    _ => unanswered = 0,
                }
                progress.done(record.is_ok());
                records.push(record);
                if unanswered >= abort_after {
                    end.aborted = Some(format!(
                        "the server stopped answering: {unanswered} requests in a row timed out \
                         or found no connection"
                    ));
                    break;
                }
            }
            _ = tokio::time::sleep_until(release_at.into()), if may_send => {
                let client = client.clone();
                let requests = Arc::clone(&requests);
                let (i, timeout) = (next, config.timeout);
                in_flight.spawn(async move { request::send(&client, &requests[i], timeout).await });
                next += 1;
            }
        }
    }
    let duration = match deadline {
        Some(d) => Instant::now().min(d) - start,
        None => start.elapsed(),
    };
    end.cancelled = in_flight.len();
    end.not_sent = n - next;
    in_flight.abort_all();
    while in_flight.join_next().await.is_some() {}
    progress.finish();
    Ok(BenchReport::build(config, n, &records, duration, end))
}

/// Sleeps until the deadline, or forever without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// Sends the first prompt `config.warmup_requests` times, unmeasured: the server's first
/// requests (lazy initialisation, cold caches, new connections) should not count, and a
/// server that cannot answer at all is better reported at once than after a whole run. The
/// first attempt is retried for up to `config.ready_timeout` (a server still starting).
async fn warmup(
    client: &HttpClient,
    config: &BenchConfig,
    requests: &[PreparedRequest],
) -> Result<(), LoadgenError> {
    let Some(first) = requests.first() else {
        return Ok(());
    };
    let ready_by = Instant::now() + config.ready_timeout;
    for i in 0..config.warmup_requests {
        loop {
            match request::send(client, first, config.timeout).await {
                Ok(_) => break,
                Err(f) if i == 0 && Instant::now() + Duration::from_secs(1) < ready_by => {
                    let _ = f;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(f) => return Err(LoadgenError::Warmup(format!("{}: {}", f.kind, f.message))),
            }
        }
    }
    Ok(())
}

/// The points of a sweep: one run per value, everything else equal.
#[derive(Debug, Clone, PartialEq)]
pub enum Sweep {
    Concurrency(Vec<usize>),
    RequestRate(Vec<RequestRate>),
}

/// Runs one point per sweep value in turn and hands each report to `on_point` as it is done
/// (so results survive a later point's failure). Stops at the first point that could not run.
pub async fn run_sweep(
    config: &BenchConfig,
    prompts: &[Prompt],
    sweep: &Sweep,
    mut on_point: impl FnMut(&BenchReport),
) -> Result<Vec<BenchReport>, LoadgenError> {
    let points: Vec<BenchConfig> = match sweep {
        Sweep::Concurrency(cs) => cs
            .iter()
            .map(|&c| BenchConfig {
                max_concurrency: Some(c),
                ..config.clone()
            })
            .collect(),
        Sweep::RequestRate(rs) => rs
            .iter()
            .map(|&r| BenchConfig {
                request_rate: r,
                ..config.clone()
            })
            .collect(),
    };
    let mut reports = Vec::with_capacity(points.len());
    for point in &points {
        let report = run(point, prompts).await?;
        on_point(&report);
        reports.push(report);
    }
    Ok(reports)
}

#[derive(Debug, Deserialize)]
struct ModelList {
    data: Vec<ModelEntry>,
}

#[derive(Debug, Deserialize)]
struct ModelEntry {
    id: String,
}

/// The first model the server lists at `GET /v1/models`, for runs without `--model`.
pub async fn fetch_model_name(
    base_url: &str,
    api_key: Option<&str>,
    timeout: Duration,
) -> Result<String, LoadgenError> {
    let client = HttpClient::new(base_url, api_key, timeout)?;
    let uri = client.uri("/v1/models")?;
    let err = |reason: String| LoadgenError::Models {
        url: uri.to_string(),
        reason,
    };
    let exchange = async {
        let resp = client.get(&uri).await.map_err(|e| err(e.message))?;
        let status = resp.status();
        let body = read_body(resp.into_body(), 1 << 20).await.map_err(err)?;
        if !status.is_success() {
            return Err(err(format!("{status}: {}", String::from_utf8_lossy(&body))));
        }
        let list: ModelList = serde_json::from_slice(&body)
            .map_err(|e| err(format!("not an OpenAI model list: {e}")))?;
        list.data
            .into_iter()
            .next()
            .map(|m| m.id)
            .ok_or_else(|| err("the server lists no model; pass --model".into()))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| err(format!("no answer within {:.1} s", timeout.as_secs_f64())))?
}
