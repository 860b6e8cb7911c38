//! Log probabilities in the two OpenAI shapes.
//!
//! The backend reports only the sampled token's log probability, so the alternatives OpenAI
//! calls `top_logprobs` are not available: completions return a `null` entry per token, chat
//! an empty list per token, whatever `logprobs`/`top_logprobs` asked for. A token's text is
//! the token decoded alone, special tokens included; a byte-level token that ends inside a
//! UTF-8 character shows as U+FFFD (its `bytes` are those of that text).

use moeflow_worker::tokenizer::Tokenizer;
use serde::Serialize;

use crate::generation::TokenOut;

fn token_text(tokenizer: &Tokenizer, id: u32) -> String {
    tokenizer.decode(&[id]).unwrap_or_default()
}

/// `/v1/completions` logprobs (the legacy shape).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    /// Character offset of each token's text in the completion text.
    pub text_offset: Vec<usize>,
    /// Always `null` entries: see the module documentation.
    pub top_logprobs: Vec<Option<()>>,
}

impl CompletionLogprobs {
    /// The logprobs of `tokens`; `offset` is the character offset of the first one and moves
    /// past them (streams carry it from chunk to chunk).
    pub fn new(tokenizer: &Tokenizer, tokens: &[TokenOut], offset: &mut usize) -> Self {
        let mut out = Self {
            tokens: Vec::with_capacity(tokens.len()),
            token_logprobs: Vec::with_capacity(tokens.len()),
            text_offset: Vec::with_capacity(tokens.len()),
            top_logprobs: vec![None; tokens.len()],
        };
        for t in tokens {
            let text = token_text(tokenizer, t.id);
            out.text_offset.push(*offset);
            *offset += text.chars().count();
            out.tokens.push(text);
            out.token_logprobs.push(t.logprob);
        }
        out
    }
}

/// `/v1/chat/completions` logprobs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

/// One token of a chat completion's logprobs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    /// Always empty: see the module documentation.
    pub top_logprobs: Vec<ChatTopLogprob>,
}

/// An alternative token (never produced; the type documents the shape).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatTopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

impl ChatLogprobs {
    pub fn new(tokenizer: &Tokenizer, tokens: &[TokenOut]) -> Self {
        let content = tokens
            .iter()
            .map(|t| {
                let token = token_text(tokenizer, t.id);
                ChatTokenLogprob {
                    bytes: token.as_bytes().to_vec(),
                    token,
                    logprob: t.logprob,
                    top_logprobs: Vec::new(),
                }
            })
            .collect();
        Self { content }
    }
}
