//! One request's life after validation, shared by the HTTP and gRPC front ends: submit to the
//! backend, detokenize incrementally, apply stop strings, keep the metrics.
//!
//! [`Generation`] owns the backend's receiver. Whoever owns the `Generation` (an SSE stream, a
//! gRPC response stream, a non-streaming handler's future) therefore owns the request: when
//! the client goes away and that owner is dropped, the receiver is dropped and the backend
//! cancels the sequence. A matched stop string drops it the same way.

use std::sync::Arc;
use std::time::Instant;

use moeflow_api::{FinishReason, GenerateRequest, TokenEvent, Usage};
use moeflow_tokenizer::{DecodeStream, Tokenizer};
use tokio::sync::mpsc;

use crate::error::RequestError;
use crate::metrics::{Outcome, RequestMetrics};
use crate::state::FrontendState;
use crate::stop::{StopMatcher, StopStep};

/// A validated, tokenized request and what the front end does with its output.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub request: GenerateRequest,
    /// Matched on the output text; the output ends before the first match.
    pub stop_strings: Vec<String>,
    /// Drop special tokens (such as `<|im_end|>`) from the text, as chat servers do.
    pub skip_special_tokens: bool,
    /// When the request arrived, for time to first token.
    pub arrived: Instant,
}

/// One generated token.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenOut {
    pub id: u32,
    pub logprob: f32,
    /// The most likely tokens at its position, most likely first (as many as asked for).
    pub top: Vec<(u32, f32)>,
}

/// New output text and the tokens that produced it. A token whose text is still held back
/// (an incomplete character, a possible stop-string prefix) travels with the next text, so
/// every token is reported exactly once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delta {
    pub text: String,
    pub tokens: Vec<TokenOut>,
}

/// What a [`Generation`] yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// More text (never empty).
    Delta(Delta),
    /// The end: the last text and tokens (possibly empty), why, and the usage.
    Finished {
        delta: Delta,
        reason: FinishReason,
        usage: Usage,
    },
    /// A terminal failure ([`RequestError::Backend`] or [`RequestError::Internal`]).
    Error(RequestError),
}

/// A submitted request's output stream.
#[derive(Debug)]
pub struct Generation {
    request_id: String,
    prompt: Vec<u32>,
    /// `None` once the request ended (or was cut off by a stop string).
    rx: Option<mpsc::Receiver<TokenEvent>>,
    tokenizer: Arc<Tokenizer>,
    decoder: DecodeStream,
    stop: StopMatcher,
    pending: Vec<TokenOut>,
    completion_tokens: u32,
    metrics: RequestMetrics,
}

/// A whole completion, for non-streaming responses.
#[derive(Debug, Clone, PartialEq)]
pub struct Collected {
    pub text: String,
    pub tokens: Vec<TokenOut>,
    pub reason: FinishReason,
    pub usage: Usage,
}

impl Generation {
    /// Submits a prepared request to the state's backend.
    pub async fn submit(state: &FrontendState, prepared: Prepared) -> Result<Self, RequestError> {
        let Prepared {
            request,
            stop_strings,
            skip_special_tokens,
            arrived,
        } = prepared;
        let request_id = request.request_id.clone();
        let prompt = request.prompt.clone();
        let prompt_len = u32::try_from(prompt.len()).unwrap_or(u32::MAX);
        tracing::debug!(%request_id, prompt_tokens = prompt_len, max_tokens = request.max_tokens, "submit");
        let rx = state.backend.submit(request).await.map_err(|e| {
            tracing::debug!(%request_id, "rejected: {e}");
            RequestError::from(e)
        })?;
        Ok(Self {
            request_id,
            decoder: DecodeStream::with_context(&prompt, skip_special_tokens),
            prompt,
            rx: Some(rx),
            tokenizer: Arc::clone(&state.tokenizer),
            stop: StopMatcher::new(stop_strings),
            pending: Vec::new(),
            completion_tokens: 0,
            metrics: RequestMetrics::new(arrived, prompt_len),
        })
    }

    /// The request's id (the backend's and the response's).
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// The prompt's token ids.
    pub fn prompt(&self) -> &[u32] {
        &self.prompt
    }

    /// The next output; `None` after the terminal one.
    pub async fn next(&mut self) -> Option<Output> {
        loop {
            let rx = self.rx.as_mut()?;
            let Some(event) = rx.recv().await else {
                return Some(self.fail(RequestError::Backend(
                    "the backend ended the request without a result".into(),
                )));
            };
            match event {
                TokenEvent::Token { id, logprob, top } => {
                    self.metrics.token();
                    self.completion_tokens += 1;
                    self.pending.push(TokenOut { id, logprob, top });
                    let text = match self.decoder.step(&self.tokenizer, id) {
                        Ok(t) => t,
                        Err(e) => return Some(self.fail(detok_error(e))),
                    };
                    let Some(text) = text else { continue };
                    match self.stop.push(&text) {
                        StopStep::Text(t) if t.is_empty() => continue,
                        StopStep::Text(text) => {
                            let tokens = std::mem::take(&mut self.pending);
                            return Some(Output::Delta(Delta { text, tokens }));
                        }
                        StopStep::Stopped(text) => {
                            tracing::debug!(request_id = %self.request_id, "stop string matched");
                            let usage = self.own_usage();
                            return Some(self.finish(text, FinishReason::Stop, usage));
                        }
                    }
                }
                TokenEvent::Finished { reason, usage } => {
                    let mut text = match self.decoder.flush(&self.tokenizer) {
                        Ok(t) => t.unwrap_or_default(),
                        Err(e) => return Some(self.fail(detok_error(e))),
                    };
                    if let StopStep::Stopped(before) = self.stop.push(&text) {
                        return Some(self.finish(before, FinishReason::Stop, usage));
                    }
                    text = self.stop.flush();
                    return Some(self.finish(text, reason, usage));
                }
                TokenEvent::Error { message } => {
                    tracing::warn!(request_id = %self.request_id, "backend error: {message}");
                    return Some(self.fail(RequestError::Backend(message)));
                }
            }
        }
    }

    /// Reads the whole output (for non-streaming responses).
    pub async fn collect(mut self) -> Result<Collected, RequestError> {
        let mut text = String::new();
        let mut tokens = Vec::new();
        while let Some(out) = self.next().await {
            match out {
                Output::Delta(d) => {
                    text.push_str(&d.text);
                    tokens.extend(d.tokens);
                }
                Output::Finished {
                    delta,
                    reason,
                    usage,
                } => {
                    text.push_str(&delta.text);
                    tokens.extend(delta.tokens);
                    return Ok(Collected {
                        text,
                        tokens,
                        reason,
                        usage,
                    });
                }
                Output::Error(e) => return Err(e),
            }
        }
        Err(RequestError::Backend(
            "the request ended without a result".into(),
        ))
    }

    fn own_usage(&self) -> Usage {
        Usage {
            prompt_tokens: u32::try_from(self.prompt.len()).unwrap_or(u32::MAX),
            completion_tokens: self.completion_tokens,
        }
    }

    /// Ends the request: drops the receiver (cancelling the backend's sequence if it still
    /// runs) and records the outcome.
    fn finish(&mut self, text: String, reason: FinishReason, usage: Usage) -> Output {
        self.rx = None;
        self.metrics.finish(Outcome::Finished(reason));
        let tokens = std::mem::take(&mut self.pending);
        Output::Finished {
            delta: Delta { text, tokens },
            reason,
            usage,
        }
    }

    fn fail(&mut self, error: RequestError) -> Output {
        self.rx = None;
        self.metrics.finish(Outcome::Error);
        Output::Error(error)
    }
}

fn detok_error(e: moeflow_tokenizer::TokenizerError) -> RequestError {
    RequestError::Internal(format!("detokenizing the output failed: {e}"))
}
