//! `POST /v1/completions`: a prompt (text or token ids) in, text out, streamed or whole.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use moeflow_tokenizer::Tokenizer;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::json::ApiJson;
use super::logprobs::CompletionLogprobs;
use super::params::{CommonFields, StopSpec, StreamOptions};
use super::sse;
use super::usage::{finish_reason, UsageOut};
use crate::error::RequestError;
use crate::generation::{Delta, Generation, Output};
use crate::ids::{new_request_id, unix_seconds};
use crate::state::FrontendState;
use crate::validate;

/// OpenAI's default `max_tokens` for completions (chat defaults to the room left).
const DEFAULT_MAX_TOKENS: u32 = 16;

/// `prompt`: text, token ids, or a one-element list of either.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(
    untagged,
    expecting = "expected a string, a list of token ids, or a one-element list of either"
)]
pub enum PromptInput {
    Text(String),
    Ids(Vec<u32>),
    Texts(Vec<String>),
    IdLists(Vec<Vec<u32>>),
}

/// The body of a completion request. Unknown fields (penalties, `best_of`, ...) are ignored,
/// as OpenAI-compatible servers do.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: PromptInput,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub seed: Option<u64>,
    pub stop: Option<StopSpec>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// Return the sampled tokens' log probabilities (any value from 0 to the limit).
    pub logprobs: Option<u32>,
    pub echo: Option<bool>,
    pub ignore_eos: Option<bool>,
    pub skip_special_tokens: Option<bool>,
    pub return_token_ids: Option<bool>,
    pub n: Option<u32>,
    pub user: Option<IgnoredAny>,
    pub workload: Option<String>,
}

enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}

impl PromptInput {
    fn single(self) -> Result<Prompt, RequestError> {
        let batched = |n: usize| {
            RequestError::invalid(
                "prompt",
                format!("batched prompts are not supported: send one prompt per request (got {n})"),
            )
        };
        match self {
            PromptInput::Text(t) => Ok(Prompt::Text(t)),
            PromptInput::Ids(ids) => Ok(Prompt::Ids(ids)),
            PromptInput::Texts(mut v) if v.len() == 1 => Ok(Prompt::Text(v.remove(0))),
            PromptInput::IdLists(mut v) if v.len() == 1 => Ok(Prompt::Ids(v.remove(0))),
            PromptInput::Texts(v) => Err(batched(v.len())),
            PromptInput::IdLists(v) => Err(batched(v.len())),
        }
    }
}

/// The handler.
pub async fn completions(
    State(state): State<FrontendState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Response {
    let arrived = Instant::now();
    match run(&state, &headers, req, arrived).await {
        Ok(r) => r,
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn run(
    state: &FrontendState,
    headers: &HeaderMap,
    req: CompletionRequest,
    arrived: Instant,
) -> Result<Response, RequestError> {
    if req.echo == Some(true) {
        return Err(RequestError::invalid("echo", "echo is not supported"));
    }
    let logprobs = req.logprobs;
    if let Some(n) = logprobs.filter(|&n| n > state.limits.max_logprobs) {
        return Err(RequestError::invalid(
            "logprobs",
            format!("logprobs is at most {}, got {n}", state.limits.max_logprobs),
        ));
    }
    let return_token_ids = req.return_token_ids.unwrap_or(false);
    let checked = CommonFields {
        model: req.model,
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: req.top_k,
        seed: req.seed,
        stop: req.stop,
        stop_token_ids: req.stop_token_ids,
        ignore_eos: req.ignore_eos,
        skip_special_tokens: req.skip_special_tokens,
        n: req.n,
        stream: req.stream,
        stream_options: req.stream_options,
        workload: req.workload,
        top_logprobs: logprobs.unwrap_or(0),
    }
    .check(state, headers)?;
    let info = state.backend.model_info();
    let prompt = match req.prompt.single()? {
        Prompt::Text(t) if t.is_empty() => {
            return Err(RequestError::invalid("prompt", "the prompt is empty"))
        }
        Prompt::Text(t) => crate::tokenize::tokenize(state, t, false, "prompt").await?,
        Prompt::Ids(ids) => ids,
    };
    validate::prompt_ids(&prompt, &info, "prompt")?;
    let max_tokens = validate::max_tokens(
        req.max_tokens,
        Some(DEFAULT_MAX_TOKENS),
        prompt.len(),
        &info,
        "prompt",
        "max_tokens",
    )?;
    let stream = checked.stream;
    let include_usage = checked.include_usage;
    let ctx = Ctx {
        id: new_request_id("cmpl"),
        created: unix_seconds(),
        model: state.model_name.clone(),
        tokenizer: Arc::clone(&state.tokenizer),
        logprobs: logprobs.is_some(),
        prompt_token_ids: return_token_ids.then(|| prompt.clone()),
        return_token_ids,
    };
    let prepared = checked.prepare(ctx.id.clone(), prompt, max_tokens, arrived);
    let generation = Generation::submit(state, prepared).await?;
    if stream {
        Ok(stream_response(ctx, generation, include_usage))
    } else {
        let done = generation.collect().await?;
        let mut offset = 0;
        let choice = Choice {
            index: 0,
            text: &done.text,
            logprobs: ctx
                .logprobs
                .then(|| CompletionLogprobs::new(&ctx.tokenizer, &done.tokens, &mut offset)),
            finish_reason: Some(finish_reason(done.reason)),
            prompt_token_ids: ctx.prompt_token_ids.as_deref(),
            token_ids: ctx
                .return_token_ids
                .then(|| done.tokens.iter().map(|t| t.id).collect()),
        };
        let body = Completion {
            id: &ctx.id,
            object: "text_completion",
            created: ctx.created,
            model: &ctx.model,
            choices: vec![choice],
            usage: Some(Some(done.usage.into())),
        };
        Ok(Json(body).into_response())
    }
}

/// What every chunk of one response repeats.
struct Ctx {
    id: String,
    created: u64,
    model: String,
    tokenizer: Arc<Tokenizer>,
    logprobs: bool,
    return_token_ids: bool,
    prompt_token_ids: Option<Vec<u32>>,
}

#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<Choice<'a>>,
    /// Absent on stream chunks unless `include_usage` (then `null` until the last chunk).
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<UsageOut>>,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    text: &'a str,
    logprobs: Option<CompletionLogprobs>,
    finish_reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_token_ids: Option<&'a [u32]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_ids: Option<Vec<u32>>,
}

impl Ctx {
    fn chunk(
        &self,
        delta: &Delta,
        reason: Option<&'static str>,
        first: bool,
        offset: &mut usize,
        include_usage: bool,
    ) -> axum::response::sse::Event {
        let choice = Choice {
            index: 0,
            text: &delta.text,
            logprobs: self
                .logprobs
                .then(|| CompletionLogprobs::new(&self.tokenizer, &delta.tokens, offset)),
            finish_reason: reason,
            prompt_token_ids: if first {
                self.prompt_token_ids.as_deref()
            } else {
                None
            },
            token_ids: self
                .return_token_ids
                .then(|| delta.tokens.iter().map(|t| t.id).collect()),
        };
        sse::json_event(&Completion {
            id: &self.id,
            object: "text_completion",
            created: self.created,
            model: &self.model,
            choices: vec![choice],
            usage: include_usage.then_some(None),
        })
    }

    fn usage_chunk(&self, usage: UsageOut) -> axum::response::sse::Event {
        sse::json_event(&Completion {
            id: &self.id,
            object: "text_completion",
            created: self.created,
            model: &self.model,
            choices: Vec::new(),
            usage: Some(Some(usage)),
        })
    }
}

fn stream_response(ctx: Ctx, mut generation: Generation, include_usage: bool) -> Response {
    let events = async_stream::stream! {
        let mut offset = 0;
        let mut first = true;
        while let Some(out) = generation.next().await {
            match out {
                Output::Delta(d) => {
                    yield Ok(ctx.chunk(&d, None, first, &mut offset, include_usage));
                    first = false;
                }
                Output::Finished { delta, reason, usage } => {
                    let reason = Some(finish_reason(reason));
                    yield Ok(ctx.chunk(&delta, reason, first, &mut offset, include_usage));
                    if include_usage {
                        yield Ok(ctx.usage_chunk(usage.into()));
                    }
                    break;
                }
                Output::Error(e) => {
                    yield Ok(sse::error_event(e));
                    break;
                }
            }
        }
        yield Ok(sse::done_event());
    };
    sse::response(events)
}
