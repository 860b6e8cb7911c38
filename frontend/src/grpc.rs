//! The gRPC generation API (`moeflow.v1.Generation`): Generate streams tokens and ends with
//! the usage; Abort, Health, ModelInfo and Loads report on the deployment.
//!
//! Errors are statuses: INVALID_ARGUMENT (the message starts with the field), RESOURCE_EXHAUSTED
//! (admission queue full), UNAVAILABLE (no healthy group, draining, or a worker failed
//! mid-stream), INTERNAL (our bug). The response stream owns the backend's receiver, so a
//! client that cancels the call cancels the request.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures_util::Stream;
use moeflow_api::{FinishReason, GenerateRequest};
use moeflow_proto::v1 as pb;
use moeflow_proto::v1::generate_request::Prompt;
use moeflow_proto::v1::generation_server::{Generation as GenerationApi, GenerationServer};
use moeflow_tokenizer::Tokenizer;
use tonic::{Request, Response, Status};

use crate::error::RequestError;
use crate::generation::{Delta, Generation, Output, Prepared};
use crate::ids::new_request_id;
use crate::state::FrontendState;
use crate::validate::{self, SamplingInput};

/// The gRPC service over `state`, ready for `tonic::transport::Server::add_service`.
pub fn grpc_service(state: FrontendState) -> GenerationServer<GrpcFrontend> {
    GenerationServer::new(GrpcFrontend::new(state))
}

/// The `moeflow.v1.Generation` implementation.
#[derive(Clone)]
pub struct GrpcFrontend {
    state: FrontendState,
}

/// The Generate response stream.
pub type GenerateStream = Pin<Box<dyn Stream<Item = Result<pb::GenerateResponse, Status>> + Send>>;

/// A request error as a status.
pub fn status(e: RequestError) -> Status {
    match e {
        RequestError::Invalid {
            param: Some(p),
            message,
        } => Status::invalid_argument(format!("{p}: {message}")),
        RequestError::Invalid {
            param: None,
            message,
        } => Status::invalid_argument(message),
        RequestError::Overloaded(m) => Status::resource_exhausted(m),
        RequestError::Unavailable(m) | RequestError::Backend(m) => Status::unavailable(m),
        RequestError::Internal(m) => Status::internal(m),
    }
}

/// Renames a validation error's field to its place in the request message.
fn in_sampling(e: RequestError) -> RequestError {
    match e {
        RequestError::Invalid {
            param: Some(p),
            message,
        } => RequestError::Invalid {
            param: Some(format!("sampling.{p}")),
            message,
        },
        other => other,
    }
}

fn reason_name(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Abort => "abort",
    }
}

impl GrpcFrontend {
    /// The implementation alone (tests call its methods without a transport).
    pub fn new(state: FrontendState) -> Self {
        Self { state }
    }

    async fn prepare(
        &self,
        req: pb::GenerateRequest,
        arrived: Instant,
    ) -> Result<Prepared, RequestError> {
        let state = &self.state;
        let info = state.backend.model_info();
        let prompt = match req.prompt {
            None => {
                return Err(RequestError::invalid(
                    "prompt",
                    "no prompt (text or token_ids)",
                ))
            }
            Some(Prompt::Text(t)) if t.is_empty() => {
                return Err(RequestError::invalid("prompt.text", "the prompt is empty"))
            }
            Some(Prompt::Text(t)) => {
                crate::tokenize::tokenize(state, t, false, "prompt.text").await?
            }
            Some(Prompt::TokenIds(ids)) => ids.ids,
        };
        validate::prompt_ids(&prompt, &info, "prompt")?;
        let params = req.sampling.unwrap_or(pb::SamplingParams {
            temperature: None,
            top_p: None,
            ..Default::default()
        });
        if params.top_logprobs > 0 && !params.logprobs {
            return Err(RequestError::invalid(
                "sampling.top_logprobs",
                "top_logprobs needs logprobs=true",
            ));
        }
        if params.top_logprobs > state.limits.max_logprobs {
            return Err(RequestError::invalid(
                "sampling.top_logprobs",
                format!(
                    "top_logprobs is at most {}, got {}",
                    state.limits.max_logprobs, params.top_logprobs
                ),
            ));
        }
        let sampling = validate::sampling(SamplingInput {
            temperature: params.temperature,
            top_p: params.top_p,
            top_k: Some(i64::from(params.top_k)),
            seed: params.seed,
            top_logprobs: params.top_logprobs,
        })
        .map_err(in_sampling)?;
        let requested = (params.max_tokens > 0).then_some(params.max_tokens);
        let max_tokens = validate::max_tokens(
            requested,
            None,
            prompt.len(),
            &info,
            "prompt",
            "sampling.max_tokens",
        )?;
        validate::stop_strings(&params.stop, &state.limits, "sampling.stop")?;
        let mut stop_token_ids = params.stop_token_ids;
        if let Some(id) = stop_token_ids.iter().find(|&&id| id >= info.vocab_size) {
            return Err(RequestError::invalid(
                "sampling.stop_token_ids",
                format!(
                    "token id {id} is outside the vocabulary (size {})",
                    info.vocab_size
                ),
            ));
        }
        if !params.ignore_eos {
            stop_token_ids.extend(state.tokenizer.eos_token_ids());
        }
        let request_id = if req.request_id.is_empty() {
            new_request_id("gen")
        } else {
            req.request_id
        };
        Ok(Prepared {
            request: GenerateRequest {
                request_id,
                prompt,
                sampling,
                max_tokens,
                stop_token_ids,
                workload: validate::workload(Some(req.workload), None),
            },
            stop_strings: params.stop,
            skip_special_tokens: !params.keep_special_tokens,
            arrived,
        })
    }
}

/// The Token messages of a delta: its text goes with its last token.
fn token_messages(
    delta: Delta,
    logprobs: bool,
    tokenizer: &Tokenizer,
) -> impl Iterator<Item = pb::GenerateResponse> + '_ {
    let last = delta.tokens.len().saturating_sub(1);
    let mut text = Some(delta.text);
    delta
        .tokens
        .into_iter()
        .enumerate()
        .map(move |(i, t)| pb::GenerateResponse {
            event: Some(pb::generate_response::Event::Token(pb::Token {
                id: t.id,
                text: if i == last {
                    text.take().unwrap_or_default()
                } else {
                    String::new()
                },
                logprob: if logprobs { t.logprob } else { 0.0 },
                top_logprobs: t
                    .top
                    .iter()
                    .map(|&(id, logprob)| pb::TopLogprob {
                        id,
                        text: tokenizer.decode(&[id]).unwrap_or_default(),
                        logprob,
                    })
                    .collect(),
            })),
            request_id: String::new(),
        })
}

fn respond(
    mut generation: Generation,
    logprobs: bool,
    tokenizer: Arc<Tokenizer>,
) -> GenerateStream {
    let stream = async_stream::stream! {
        let mut request_id = Some(generation.request_id().to_string());
        while let Some(out) = generation.next().await {
            match out {
                Output::Delta(d) => {
                    for mut msg in token_messages(d, logprobs, &tokenizer) {
                        msg.request_id = request_id.take().unwrap_or_default();
                        yield Ok(msg);
                    }
                }
                Output::Finished { delta, reason, usage } => {
                    for mut msg in token_messages(delta, logprobs, &tokenizer) {
                        msg.request_id = request_id.take().unwrap_or_default();
                        yield Ok(msg);
                    }
                    yield Ok(pb::GenerateResponse {
                        event: Some(pb::generate_response::Event::Finished(pb::Finished {
                            reason: reason_name(reason).to_string(),
                            usage: Some(pb::Usage {
                                prompt_tokens: usage.prompt_tokens,
                                completion_tokens: usage.completion_tokens,
                            }),
                        })),
                        request_id: request_id.take().unwrap_or_default(),
                    });
                    break;
                }
                Output::Error(e) => {
                    yield Err(status(e));
                    break;
                }
            }
        }
    };
    Box::pin(stream)
}

#[tonic::async_trait]
impl GenerationApi for GrpcFrontend {
    type GenerateStream = GenerateStream;

    async fn generate(
        &self,
        request: Request<pb::GenerateRequest>,
    ) -> Result<Response<GenerateStream>, Status> {
        let arrived = Instant::now();
        let req = request.into_inner();
        let logprobs = req.sampling.as_ref().is_some_and(|s| s.logprobs);
        let prepared = self.prepare(req, arrived).await.map_err(status)?;
        let generation = Generation::submit(&self.state, prepared)
            .await
            .map_err(status)?;
        Ok(Response::new(respond(
            generation,
            logprobs,
            self.state.tokenizer.clone(),
        )))
    }

    async fn abort(
        &self,
        request: Request<pb::AbortRequest>,
    ) -> Result<Response<pb::AbortResponse>, Status> {
        let id = request.into_inner().request_id;
        if id.is_empty() {
            return Err(Status::invalid_argument("request_id: empty"));
        }
        let found = self.state.backend.abort(&id).await;
        Ok(Response::new(pb::AbortResponse { found }))
    }

    async fn health(
        &self,
        _request: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        let groups: Vec<pb::GroupHealth> = self
            .state
            .backend
            .health()
            .into_iter()
            .map(|c| pb::GroupHealth {
                name: c.name,
                healthy: c.healthy,
                detail: c.detail,
            })
            .collect();
        Ok(Response::new(pb::HealthResponse {
            healthy: groups.iter().all(|g| g.healthy),
            groups,
        }))
    }

    async fn model_info(
        &self,
        _request: Request<pb::ModelInfoRequest>,
    ) -> Result<Response<pb::ModelInfoResponse>, Status> {
        let info = self.state.model_info();
        Ok(Response::new(pb::ModelInfoResponse {
            model_id: info.id,
            architecture: info.architecture,
            max_context: info.max_context,
            vocab_size: info.vocab_size,
            num_experts: info.num_experts,
            experts_per_token: info.experts_per_token,
        }))
    }

    async fn loads(
        &self,
        _request: Request<pb::LoadsRequest>,
    ) -> Result<Response<pb::LoadsResponse>, Status> {
        let workers = self
            .state
            .backend
            .loads()
            .await
            .into_iter()
            .map(|l| pb::WorkerLoad {
                group: l.group,
                rank: l.rank,
                running_sequences: l.running_sequences,
                queued_tokens: l.queued_tokens,
                kv_usage: l.kv_usage,
            })
            .collect();
        Ok(Response::new(pb::LoadsResponse { workers }))
    }
}
