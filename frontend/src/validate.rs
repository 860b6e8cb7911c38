//! Checks shared by the HTTP and gRPC front ends: sampling parameters, prompt token ids, and
//! the prompt + completion budget against the model's context. Every error names the field
//! in the protocol's own spelling, which the caller passes in.

use moeflow_api::{ModelInfo, SamplingParams};

use crate::error::RequestError;
use crate::state::Limits;

/// Sampling fields as a client sent them (absent fields take OpenAI's defaults).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SamplingInput {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// vLLM's convention: -1 and 0 disable top-k.
    pub top_k: Option<i64>,
    pub seed: Option<u64>,
    /// Alternatives to report per token (already checked against the front end's limit).
    pub top_logprobs: u32,
}

/// Validates sampling parameters: temperature >= 0 (0 is greedy), top_p in (0, 1], top_k >= -1.
pub fn sampling(input: SamplingInput) -> Result<SamplingParams, RequestError> {
    let defaults = SamplingParams::default();
    let temperature = input.temperature.unwrap_or(defaults.temperature);
    if !temperature.is_finite() || temperature < 0.0 {
        return Err(RequestError::invalid(
            "temperature",
            format!("temperature must be a non-negative number, got {temperature}"),
        ));
    }
    let top_p = input.top_p.unwrap_or(defaults.top_p);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(RequestError::invalid(
            "top_p",
            format!("top_p must be in (0, 1], got {top_p}"),
        ));
    }
    let top_k = match input.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => u32::try_from(k).unwrap_or(u32::MAX),
        Some(k) => {
            return Err(RequestError::invalid(
                "top_k",
                format!("top_k must be -1 (disabled) or positive, got {k}"),
            ))
        }
    };
    Ok(SamplingParams {
        temperature,
        top_p,
        top_k,
        seed: input.seed,
        top_logprobs: input.top_logprobs,
    })
}

/// Checks that a prompt is non-empty and every id is in the model's vocabulary.
pub fn prompt_ids(ids: &[u32], info: &ModelInfo, param: &str) -> Result<(), RequestError> {
    if ids.is_empty() {
        return Err(RequestError::invalid(param, "the prompt is empty"));
    }
    if let Some((i, id)) = ids
        .iter()
        .enumerate()
        .find(|(_, &id)| id >= info.vocab_size)
    {
        return Err(RequestError::invalid(
            param,
            format!(
                "token id {id} at position {i} is outside the vocabulary (size {})",
                info.vocab_size
            ),
        ));
    }
    Ok(())
}

/// How many tokens a request may generate: the client's `requested` (at least 1), else
/// `default` clamped to the room the context leaves, else all of that room. Errors name
/// `prompt_param` when the prompt alone fills the context and `max_tokens_param` when the
/// requested budget does not fit.
pub fn max_tokens(
    requested: Option<u32>,
    default: Option<u32>,
    prompt_len: usize,
    info: &ModelInfo,
    prompt_param: &str,
    max_tokens_param: &str,
) -> Result<u32, RequestError> {
    let context = info.max_context as usize;
    if requested == Some(0) {
        return Err(RequestError::invalid(
            max_tokens_param,
            format!("{max_tokens_param} must be at least 1, got 0"),
        ));
    }
    if prompt_len >= context {
        return Err(RequestError::invalid(
            prompt_param,
            format!(
                "this model's maximum context length is {context} tokens, and the prompt has \
                 {prompt_len} tokens, which leaves no room to generate"
            ),
        ));
    }
    let room = u32::try_from(context - prompt_len).unwrap_or(u32::MAX);
    match requested {
        Some(n) if n > room => Err(RequestError::invalid(
            max_tokens_param,
            format!(
                "this model's maximum context length is {context} tokens; the prompt has \
                 {prompt_len} tokens and {max_tokens_param} asks for {n} more"
            ),
        )),
        Some(n) => Ok(n),
        None => Ok(default.map_or(room, |d| d.min(room))),
    }
}

/// Checks stop strings against the limits (count and length).
pub fn stop_strings(stops: &[String], limits: &Limits, param: &str) -> Result<(), RequestError> {
    if stops.len() > limits.max_stop_strings {
        return Err(RequestError::invalid(
            param,
            format!(
                "at most {} stop strings are accepted, got {}",
                limits.max_stop_strings,
                stops.len()
            ),
        ));
    }
    if let Some(s) = stops.iter().find(|s| s.len() > limits.max_stop_len) {
        return Err(RequestError::invalid(
            param,
            format!(
                "stop strings are at most {} bytes long; one has {}",
                limits.max_stop_len,
                s.len()
            ),
        ));
    }
    Ok(())
}

/// Checks the `model` field: absent, or the served name.
pub fn model(requested: Option<&str>, served: &str) -> Result<(), RequestError> {
    match requested {
        None => Ok(()),
        Some(m) if m == served => Ok(()),
        Some(m) => Err(RequestError::invalid(
            "model",
            format!("the model {m:?} does not exist; this server serves {served:?}"),
        )),
    }
}

/// A workload label: the body's field wins over the header; blank means none.
pub fn workload(body: Option<String>, header: Option<String>) -> Option<String> {
    body.or(header)
        .map(|w| w.trim().to_string())
        .filter(|w| !w.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ModelInfo {
        ModelInfo {
            id: "m".into(),
            architecture: "qwen3_moe".into(),
            max_context: 100,
            vocab_size: 50,
            num_experts: 8,
            experts_per_token: 2,
        }
    }

    #[test]
    fn sampling_ranges() {
        assert!(sampling(SamplingInput::default()).is_ok());
        let bad = |i: SamplingInput| sampling(i).err().and_then(|e| e.param().map(String::from));
        let t = SamplingInput {
            temperature: Some(-0.1),
            ..Default::default()
        };
        assert_eq!(bad(t).as_deref(), Some("temperature"));
        for p in [0.0, 1.5, -1.0] {
            let i = SamplingInput {
                top_p: Some(p),
                ..Default::default()
            };
            assert_eq!(bad(i).as_deref(), Some("top_p"));
        }
        let k = SamplingInput {
            top_k: Some(-2),
            ..Default::default()
        };
        assert_eq!(bad(k).as_deref(), Some("top_k"));
        let ok = sampling(SamplingInput {
            top_k: Some(-1),
            temperature: Some(0.0),
            ..Default::default()
        });
        assert_eq!(ok.map(|s| (s.top_k, s.temperature)), Ok((0, 0.0)));
    }

    #[test]
    fn budget_against_context() {
        let i = info();
        assert_eq!(max_tokens(Some(10), None, 90, &i, "p", "m"), Ok(10));
        assert_eq!(
            max_tokens(Some(11), None, 90, &i, "p", "m").map_err(|e| e.param().map(String::from)),
            Err(Some("m".into()))
        );
        assert_eq!(
            max_tokens(None, None, 100, &i, "p", "m").map_err(|e| e.param().map(String::from)),
            Err(Some("p".into()))
        );
        assert_eq!(max_tokens(None, Some(16), 95, &i, "p", "m"), Ok(5));
        assert_eq!(max_tokens(None, None, 95, &i, "p", "m"), Ok(5));
        assert!(max_tokens(Some(0), None, 5, &i, "p", "m").is_err());
    }

    #[test]
    fn prompt_checks() {
        let i = info();
        assert!(prompt_ids(&[], &i, "prompt").is_err());
        assert!(prompt_ids(&[50], &i, "prompt").is_err());
        assert!(prompt_ids(&[0, 49], &i, "prompt").is_ok());
    }

    #[test]
    fn workload_precedence() {
        assert_eq!(
            workload(Some("a".into()), Some("b".into())),
            Some("a".into())
        );
        assert_eq!(workload(None, Some(" b ".into())), Some("b".into()));
        assert_eq!(workload(Some(" ".into()), None), None);
    }
}
