//! `POST /v1/chat/completions`: messages rendered with the checkpoint's chat template, the
//! assistant's reply out, streamed or whole.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::Json;
use moeflow_tokenizer::{ChatMessage, Tokenizer, TokenizerError};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::json::ApiJson;
use super::logprobs::ChatLogprobs;
use super::params::{CommonFields, StopSpec, StreamOptions};
use super::sse;
use super::usage::{finish_reason, UsageOut};
use crate::error::RequestError;
use crate::generation::{Delta, Generation, Output};
use crate::ids::{new_request_id, unix_seconds};
use crate::state::FrontendState;
use crate::validate;

/// A message's `content`: text, or a list of parts of which only text parts are supported.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged, expecting = "expected a string or a list of content parts")]
pub enum ContentInput {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// One part of a message's content (`{"type": "text", "text": "..."}`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

/// One message as clients send it; other fields (`name`, `tool_calls`) are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MessageInput {
    pub role: String,
    /// `null` is allowed (an assistant turn that only called tools) and reads as empty.
    pub content: Option<ContentInput>,
}

/// The body of a chat completion request. Unknown fields are ignored.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Vec<MessageInput>,
    pub max_tokens: Option<u32>,
    /// OpenAI's newer name for `max_tokens`; it wins when both are given.
    pub max_completion_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub seed: Option<u64>,
    pub stop: Option<StopSpec>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u32>,
    pub ignore_eos: Option<bool>,
    pub skip_special_tokens: Option<bool>,
    pub return_token_ids: Option<bool>,
    pub n: Option<u32>,
    pub user: Option<IgnoredAny>,
    pub workload: Option<String>,
    /// Whether the rendered prompt ends with the assistant's turn header (default true).
    pub add_generation_prompt: Option<bool>,
    /// Extra chat template variables (vLLM's extension), e.g. `{"enable_thinking": false}`.
    pub chat_template_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The handler.
pub async fn chat_completions(
    State(state): State<FrontendState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ChatRequest>,
) -> Response {
    let arrived = Instant::now();
    match run(&state, &headers, req, arrived).await {
        Ok(r) => r,
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// The messages as the template reads them, text parts joined by newlines.
fn template_messages(messages: Vec<MessageInput>) -> Result<Vec<ChatMessage>, RequestError> {
    if messages.is_empty() {
        return Err(RequestError::invalid("messages", "messages is empty"));
    }
    messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            if m.role.trim().is_empty() {
                return Err(RequestError::invalid(
                    format!("messages[{i}].role"),
                    "the role is empty",
                ));
            }
            let content = match m.content {
                None => String::new(),
                Some(ContentInput::Text(t)) => t,
                Some(ContentInput::Parts(parts)) => {
                    let mut texts = Vec::with_capacity(parts.len());
                    for (j, part) in parts.into_iter().enumerate() {
                        match (part.kind.as_str(), part.text) {
                            ("text", Some(t)) => texts.push(t),
                            ("text", None) => {
                                return Err(RequestError::invalid(
                                    format!("messages[{i}].content[{j}].text"),
                                    "a text part needs a text field",
                                ))
                            }
                            (kind, _) => {
                                return Err(RequestError::invalid(
                                    format!("messages[{i}].content[{j}].type"),
                                    format!(
                                    "content parts of type {kind:?} are not supported; only text"
                                ),
                                ))
                            }
                        }
                    }
                    texts.join("\n")
                }
            };
            Ok(ChatMessage::new(m.role, content))
        })
        .collect()
}

fn render(
    tokenizer: &Tokenizer,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    kwargs: Option<&serde_json::Map<String, serde_json::Value>>,
) -> Result<String, RequestError> {
    let rendered = match kwargs {
        Some(extra) => tokenizer.apply_chat_template_with(messages, add_generation_prompt, extra),
        None => tokenizer.apply_chat_template(messages, add_generation_prompt),
    };
    rendered.map_err(|e| match e {
        TokenizerError::NoChatTemplate { .. } => RequestError::invalid(
            "messages",
            "this model has no chat template; use /v1/completions",
        ),
        other => RequestError::invalid(
            "messages",
            format!("the chat template rejected the messages: {other}"),
        ),
    })
}

async fn run(
    state: &FrontendState,
    headers: &HeaderMap,
    req: ChatRequest,
    arrived: Instant,
) -> Result<Response, RequestError> {
    let logprobs = req.logprobs.unwrap_or(false);
    if let Some(n) = req.top_logprobs {
        if !logprobs {
            return Err(RequestError::invalid(
                "top_logprobs",
                "top_logprobs needs logprobs=true",
            ));
        }
        if n > state.limits.max_logprobs {
            return Err(RequestError::invalid(
                "top_logprobs",
                format!(
                    "top_logprobs is at most {}, got {n}",
                    state.limits.max_logprobs
                ),
            ));
        }
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
        top_logprobs: req.top_logprobs.unwrap_or(0),
    }
    .check(state, headers)?;
    let messages = template_messages(req.messages)?;
    let text = render(
        &state.tokenizer,
        &messages,
        req.add_generation_prompt.unwrap_or(true),
        req.chat_template_kwargs.as_ref(),
    )?;
    let prompt = crate::tokenize::tokenize(state, text, true, "messages").await?;
    let info = state.backend.model_info();
    validate::prompt_ids(&prompt, &info, "messages")?;
    let (requested, param) = match (req.max_completion_tokens, req.max_tokens) {
        (Some(n), _) => (Some(n), "max_completion_tokens"),
        (None, n) => (n, "max_tokens"),
    };
    let max_tokens = validate::max_tokens(requested, None, prompt.len(), &info, "messages", param)?;
    let stream = checked.stream;
    let include_usage = checked.include_usage;
    let ctx = Ctx {
        id: new_request_id("chatcmpl"),
        created: unix_seconds(),
        model: state.model_name.clone(),
        tokenizer: Arc::clone(&state.tokenizer),
        logprobs,
        return_token_ids,
        prompt_token_ids: return_token_ids.then(|| prompt.clone()),
        include_usage,
    };
    let prepared = checked.prepare(ctx.id.clone(), prompt, max_tokens, arrived);
    let generation = Generation::submit(state, prepared).await?;
    if stream {
        return Ok(stream_response(ctx, generation));
    }
    let done = generation.collect().await?;
    let choice = Choice {
        index: 0,
        message: Message {
            role: "assistant",
            content: &done.text,
        },
        logprobs: ctx
            .logprobs
            .then(|| ChatLogprobs::new(&ctx.tokenizer, &done.tokens)),
        finish_reason: finish_reason(done.reason),
        prompt_token_ids: ctx.prompt_token_ids.as_deref(),
        token_ids: ctx
            .return_token_ids
            .then(|| done.tokens.iter().map(|t| t.id).collect()),
    };
    let body = ChatCompletion {
        id: &ctx.id,
        object: "chat.completion",
        created: ctx.created,
        model: &ctx.model,
        choices: vec![choice],
        usage: done.usage.into(),
    };
    Ok(Json(body).into_response())
}

#[derive(Serialize)]
struct ChatCompletion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<Choice<'a>>,
    usage: UsageOut,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    message: Message<'a>,
    logprobs: Option<ChatLogprobs>,
    finish_reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_token_ids: Option<&'a [u32]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_ids: Option<Vec<u32>>,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct ChatChunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<ChunkChoice<'a>>,
    /// Absent unless `include_usage` (then `null` until the last chunk).
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<UsageOut>>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: DeltaOut<'a>,
    logprobs: Option<ChatLogprobs>,
    finish_reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_token_ids: Option<&'a [u32]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_ids: Option<Vec<u32>>,
}

#[derive(Serialize)]
struct DeltaOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
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
    include_usage: bool,
}

impl Ctx {
    fn event(&self, choices: Vec<ChunkChoice<'_>>, usage: Option<UsageOut>) -> Event {
        sse::json_event(&ChatChunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices,
            usage: self.include_usage.then_some(usage),
        })
    }

    /// The first chunk: the assistant's role, and the prompt's ids if asked for.
    fn role_chunk(&self) -> Event {
        let choice = ChunkChoice {
            index: 0,
            delta: DeltaOut {
                role: Some("assistant"),
                content: Some(""),
            },
            logprobs: None,
            finish_reason: None,
            prompt_token_ids: self.prompt_token_ids.as_deref(),
            token_ids: self.return_token_ids.then(Vec::new),
        };
        self.event(vec![choice], None)
    }

    fn chunk(&self, delta: &Delta, reason: Option<&'static str>) -> Event {
        let choice = ChunkChoice {
            index: 0,
            delta: DeltaOut {
                role: None,
                content: (!delta.text.is_empty()).then_some(delta.text.as_str()),
            },
            logprobs: self
                .logprobs
                .then(|| ChatLogprobs::new(&self.tokenizer, &delta.tokens)),
            finish_reason: reason,
            prompt_token_ids: None,
            token_ids: self
                .return_token_ids
                .then(|| delta.tokens.iter().map(|t| t.id).collect()),
        };
        self.event(vec![choice], None)
    }
}

fn stream_response(ctx: Ctx, mut generation: Generation) -> Response {
    let events = async_stream::stream! {
        yield Ok(ctx.role_chunk());
        while let Some(out) = generation.next().await {
            match out {
                Output::Delta(d) => yield Ok(ctx.chunk(&d, None)),
                Output::Finished { delta, reason, usage } => {
                    yield Ok(ctx.chunk(&delta, Some(finish_reason(reason))));
                    if ctx.include_usage {
                        yield Ok(ctx.event(Vec::new(), Some(usage.into())));
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
