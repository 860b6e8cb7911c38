//! One request: its body, and its exchange with the server timed chunk by chunk.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{StatusCode, Uri};
use serde::Deserialize;
use serde_json::json;

use crate::config::{BenchConfig, Endpoint};
use crate::dataset::{estimate_tokens, Prompt};
use crate::http::{error_chain, read_body, HttpClient};
use crate::record::{Failure, FailureKind, RequestRecord, Success};
use crate::sse::{SseEvent, SseParser};

/// Bytes of an error response kept for the report.
const ERROR_BODY_LIMIT: usize = 4 << 10;
/// An unstreamed response larger than this is refused.
const BODY_LIMIT: usize = 64 << 20;
/// After `[DONE]`, how long the rest of the body (the chunked terminator) may take; reading it
/// lets the connection go back to the pool instead of being reopened for the next request.
const DRAIN_AFTER_DONE: Duration = Duration::from_millis(200);

/// A request ready to send: the body is serialised before the run so that serialisation
/// does not count in any latency.
#[derive(Debug, Clone)]
pub struct PreparedRequest {
    pub uri: Uri,
    pub body: Bytes,
    pub endpoint: Endpoint,
    pub stream: bool,
    pub estimated_prompt_tokens: u64,
}

impl PreparedRequest {
    pub fn new(config: &BenchConfig, uri: Uri, prompt: &Prompt) -> Self {
        Self {
            uri,
            body: Bytes::from(body(config, prompt).to_string()),
            endpoint: config.endpoint,
            stream: config.stream,
            estimated_prompt_tokens: prompt.estimated_tokens,
        }
    }
}

/// The JSON body `vllm bench serve` would send for this prompt.
pub fn body(config: &BenchConfig, prompt: &Prompt) -> serde_json::Value {
    let mut b = json!({
        "model": config.model,
        "max_tokens": prompt.output_len,
        "temperature": config.temperature,
        "stream": config.stream,
    });
    match config.endpoint {
        Endpoint::Completions => b["prompt"] = json!(prompt.text),
        Endpoint::Chat => b["messages"] = json!([{"role": "user", "content": prompt.text}]),
    }
    if config.stream {
        // The server's token counts, in a last chunk; servers that ignore it are counted by
        // chunks instead.
        b["stream_options"] = json!({"include_usage": true});
    }
    if config.ignore_eos {
        b["ignore_eos"] = json!(true);
    }
    b
}

/// Sends the request and times it; never longer than `timeout`.
pub async fn send(client: &HttpClient, req: &PreparedRequest, timeout: Duration) -> RequestRecord {
    match tokio::time::timeout(timeout, exchange(client, req)).await {
        Ok(record) => record,
        Err(_) => Err(Failure::new(
            FailureKind::Timeout,
            format!("no complete response within {:.1} s", timeout.as_secs_f64()),
        )),
    }
}

async fn exchange(client: &HttpClient, req: &PreparedRequest) -> RequestRecord {
    let start = Instant::now();
    let resp = client
        .post_json(&req.uri, req.body.clone())
        .await
        .map_err(|e| {
            let kind = if e.connect {
                FailureKind::Connect
            } else {
                FailureKind::NoResponse
            };
            Failure::new(kind, e.message)
        })?;
    let status = resp.status();
    if status != StatusCode::OK {
        let body = read_body(resp.into_body(), ERROR_BODY_LIMIT)
            .await
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        return Err(Failure::new(
            FailureKind::Status(status.as_u16()),
            format!("{status}: {}", body.trim()),
        ));
    }
    let mut acc = Accumulator::new(start, req);
    if req.stream {
        stream(resp.into_body(), &mut acc).await?;
    } else {
        let body = read_body(resp.into_body(), BODY_LIMIT)
            .await
            .map_err(|e| Failure::new(FailureKind::BrokenStream, e))?;
        acc.whole(&body)?;
    }
    Ok(acc.finish())
}

/// Reads SSE events until `[DONE]`; a body that ends or breaks before it is a broken stream.
async fn stream(mut body: Incoming, acc: &mut Accumulator) -> Result<(), Failure> {
    let mut parser = SseParser::new();
    loop {
        let Some(frame) = body.frame().await else {
            let tail = parser.finish().map_err(bad_response)?;
            if let Some(ev) = tail {
                if acc.event(ev, Instant::now())? {
                    return Ok(());
                }
            }
            return Err(Failure::new(
                FailureKind::BrokenStream,
                "the stream ended before `data: [DONE]`",
            ));
        };
        let frame = frame.map_err(|e| Failure::new(FailureKind::BrokenStream, error_chain(&e)))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let now = Instant::now();
        for ev in parser.push(&data).map_err(bad_response)? {
            if acc.event(ev, now)? {
                acc.end = Some(now);
                let _ = tokio::time::timeout(DRAIN_AFTER_DONE, async {
                    while let Some(Ok(_)) = body.frame().await {}
                })
                .await;
                return Ok(());
            }
        }
    }
}

fn bad_response(e: impl std::fmt::Display) -> Failure {
    Failure::new(FailureKind::BadResponse, e.to_string())
}

/// The parts of an OpenAI response (streamed chunk or whole) that the measurements need.
#[derive(Debug, Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<Usage>,
    error: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    /// Completions (streamed or whole).
    text: Option<String>,
    /// Streamed chat.
    delta: Option<Message>,
    /// Whole chat.
    message: Option<Message>,
}

#[derive(Debug, Deserialize)]
struct Message {
    content: Option<String>,
    /// Reasoning models stream their thinking here; it is output all the same.
    reasoning_content: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Usage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

impl Choice {
    /// The pieces of output text this choice carries, whichever API shape it has.
    fn parts(&self) -> impl Iterator<Item = &str> {
        fn msg(m: &Option<Message>) -> [Option<&str>; 2] {
            m.as_ref()
                .map(|m| [m.reasoning_content.as_deref(), m.content.as_deref()])
                .unwrap_or_default()
        }
        [self.text.as_deref()]
            .into_iter()
            .chain(msg(&self.delta))
            .chain(msg(&self.message))
            .flatten()
    }

    fn has_text(&self) -> bool {
        self.parts().any(|p| !p.is_empty())
    }

    fn text(&self) -> String {
        self.parts().collect()
    }
}

/// The error's `message` if it has one, else the error as JSON.
fn error_message(e: &serde_json::Value) -> String {
    e.get("message")
        .and_then(|m| m.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| e.to_string())
}

/// Everything measured so far about one request.
struct Accumulator {
    start: Instant,
    estimated_prompt_tokens: u64,
    first: Option<Instant>,
    last: Option<Instant>,
    end: Option<Instant>,
    itl: Vec<Duration>,
    chunks: u64,
    usage_prompt: Option<u64>,
    usage_output: Option<u64>,
    /// Unstreamed: the output's estimated tokens, when the server gives no usage.
    estimated_output: Option<u64>,
}

impl Accumulator {
    fn new(start: Instant, req: &PreparedRequest) -> Self {
        Self {
            start,
            estimated_prompt_tokens: req.estimated_prompt_tokens,
            first: None,
            last: None,
            end: None,
            itl: Vec::new(),
            chunks: 0,
            usage_prompt: None,
            usage_output: None,
            estimated_output: None,
        }
    }

    /// One SSE event received at `now`; `true` at `[DONE]`.
    fn event(&mut self, ev: SseEvent, now: Instant) -> Result<bool, Failure> {
        if ev.event.as_deref() == Some("error") {
            return Err(Failure::new(FailureKind::SseError, ev.data));
        }
        let data = ev.data.trim();
        if data == "[DONE]" {
            return Ok(true);
        }
        let chunk: Chunk = serde_json::from_str(data)
            .map_err(|e| bad_response(format!("a chunk is not OpenAI JSON ({e}): {data:.200}")))?;
        self.usage(&chunk)?;
        if chunk.choices.first().is_some_and(Choice::has_text) {
            match self.last {
                None => self.first = Some(now),
                Some(last) => self.itl.push(now.saturating_duration_since(last)),
            }
            self.last = Some(now);
            self.chunks += 1;
        }
        Ok(false)
    }

    /// An unstreamed response.
    fn whole(&mut self, body: &[u8]) -> Result<(), Failure> {
        self.end = Some(Instant::now());
        let chunk: Chunk = serde_json::from_slice(body)
            .map_err(|e| bad_response(format!("the response is not OpenAI JSON ({e})")))?;
        self.usage(&chunk)?;
        let text = chunk.choices.first().map(Choice::text).unwrap_or_default();
        self.estimated_output = Some(if text.is_empty() {
            0
        } else {
            estimate_tokens(&text)
        });
        Ok(())
    }

    fn usage(&mut self, chunk: &Chunk) -> Result<(), Failure> {
        if let Some(e) = chunk.error.as_ref().filter(|e| !e.is_null()) {
            return Err(Failure::new(FailureKind::SseError, error_message(e)));
        }
        if let Some(u) = &chunk.usage {
            self.usage_prompt = u.prompt_tokens.or(self.usage_prompt);
            self.usage_output = u.completion_tokens.or(self.usage_output);
        }
        Ok(())
    }

    fn finish(self) -> Success {
        let end = self.end.unwrap_or_else(Instant::now);
        let (output_tokens, output_from_server) = match self.usage_output {
            Some(n) => (n, true),
            None => (self.estimated_output.unwrap_or(self.chunks), false),
        };
        Success {
            prompt_tokens: self.usage_prompt.unwrap_or(self.estimated_prompt_tokens),
            prompt_tokens_from_server: self.usage_prompt.is_some(),
            output_tokens,
            output_tokens_from_server: output_from_server,
            ttft: self.first.map(|f| f.saturating_duration_since(self.start)),
            itl: self.itl,
            chunks: self.chunks,
            e2e: end.saturating_duration_since(self.start),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BenchConfig;

    fn prompt() -> Prompt {
        Prompt {
            text: "hello world".into(),
            estimated_tokens: 2,
            output_len: 7,
        }
    }

    #[test]
    fn completions_body() {
        let mut c = BenchConfig::new("http://h:1", "m");
        c.ignore_eos = true;
        let b = body(&c, &prompt());
        assert_eq!(b["prompt"], "hello world");
        assert_eq!(b["max_tokens"], 7);
        assert_eq!(b["model"], "m");
        assert_eq!(b["stream"], true);
        assert_eq!(b["stream_options"]["include_usage"], true);
        assert_eq!(b["ignore_eos"], true);
    }

    #[test]
    fn chat_body_without_streaming_or_ignore_eos() {
        let mut c = BenchConfig::new("http://h:1", "m");
        c.endpoint = Endpoint::Chat;
        c.stream = false;
        let b = body(&c, &prompt());
        assert_eq!(b["messages"][0]["role"], "user");
        assert_eq!(b["messages"][0]["content"], "hello world");
        assert!(b.get("stream_options").is_none());
        assert!(b.get("ignore_eos").is_none());
    }

    fn acc() -> Accumulator {
        let c = BenchConfig::new("http://h:1", "m");
        let uri: Uri = "http://h:1/v1/completions".parse().unwrap();
        Accumulator::new(Instant::now(), &PreparedRequest::new(&c, uri, &prompt()))
    }

    fn ev(data: &str) -> SseEvent {
        SseEvent {
            event: None,
            data: data.into(),
        }
    }

    #[test]
    fn chunks_usage_and_done() {
        let mut a = acc();
        let t0 = Instant::now();
        // A role-only chat chunk carries no text: it is not the first token.
        assert!(!a
            .event(ev(r#"{"choices":[{"delta":{"role":"assistant"}}]}"#), t0)
            .unwrap());
        a.event(ev(r#"{"choices":[{"text":"a"}]}"#), t0).unwrap();
        let t1 = t0 + Duration::from_millis(5);
        a.event(ev(r#"{"choices":[{"delta":{"content":"b"}}]}"#), t1)
            .unwrap();
        a.event(
            ev(r#"{"choices":[],"usage":{"prompt_tokens":11,"completion_tokens":2}}"#),
            t1,
        )
        .unwrap();
        assert!(a.event(ev("[DONE]"), t1).unwrap());
        let s = a.finish();
        assert_eq!((s.prompt_tokens, s.output_tokens), (11, 2));
        assert!(s.prompt_tokens_from_server && s.output_tokens_from_server);
        assert_eq!(s.itl, vec![Duration::from_millis(5)]);
        assert!(s.ttft.is_some());
    }

    #[test]
    fn without_usage_chunks_and_estimates_count() {
        let mut a = acc();
        let now = Instant::now();
        a.event(ev(r#"{"choices":[{"text":"a"}]}"#), now).unwrap();
        a.event(ev(r#"{"choices":[{"text":"b"}]}"#), now).unwrap();
        let s = a.finish();
        assert_eq!((s.prompt_tokens, s.output_tokens), (2, 2));
        assert!(!s.prompt_tokens_from_server);
    }

    #[test]
    fn error_events_and_bad_json() {
        let mut a = acc();
        let e = a
            .event(
                ev(r#"{"error":{"message":"boom","type":"x"}}"#),
                Instant::now(),
            )
            .unwrap_err();
        assert_eq!(
            (e.kind, e.message.as_str()),
            (FailureKind::SseError, "boom")
        );
        let named = SseEvent {
            event: Some("error".into()),
            data: "oops".into(),
        };
        assert_eq!(
            a.event(named, Instant::now()).unwrap_err().kind,
            FailureKind::SseError
        );
        let bad = a.event(ev("{not json"), Instant::now()).unwrap_err();
        assert_eq!(bad.kind, FailureKind::BadResponse);
    }

    #[test]
    fn unstreamed_response() {
        let mut a = acc();
        a.whole(br#"{"choices":[{"message":{"content":"hello there you"}}],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#)
            .unwrap();
        let s = a.finish();
        assert_eq!((s.prompt_tokens, s.output_tokens, s.ttft), (3, 4, None));
        let mut b = acc();
        b.whole(br#"{"choices":[{"text":"12345678"}]}"#).unwrap();
        assert_eq!(b.finish().output_tokens, 2);
    }
}
