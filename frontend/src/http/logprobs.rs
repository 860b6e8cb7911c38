//! Log probabilities in the two OpenAI shapes.
//!
//! Alternatives (`logprobs: N` on completions, `top_logprobs: N` on chat) are the N most
//! likely tokens at each position as the worker saw them, before temperature and truncation.
//! Completions give, per token, an object from token text to log-probability holding those N
//! and the sampled token (OpenAI's legacy shape; `null` entries when N is 0); chat gives a
//! list of exactly N. A token's text is the token decoded alone, special tokens included; a
//! byte-level token that ends inside a UTF-8 character shows as U+FFFD (its `bytes` are those
//! of that text), so two alternatives may share a text: the object keeps the likelier.

use moeflow_tokenizer::Tokenizer;
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
    /// Per token: `null` when no alternatives were asked for, else text -> log-probability
    /// of the alternatives and the sampled token.
    pub top_logprobs: Vec<Option<serde_json::Map<String, serde_json::Value>>>,
}

impl CompletionLogprobs {
    /// The logprobs of `tokens`; `offset` is the character offset of the first one and moves
    /// past them (streams carry it from chunk to chunk).
    pub fn new(tokenizer: &Tokenizer, tokens: &[TokenOut], offset: &mut usize) -> Self {
        let mut out = Self {
            tokens: Vec::with_capacity(tokens.len()),
            token_logprobs: Vec::with_capacity(tokens.len()),
            text_offset: Vec::with_capacity(tokens.len()),
            top_logprobs: Vec::with_capacity(tokens.len()),
        };
        for t in tokens {
            let text = token_text(tokenizer, t.id);
            out.text_offset.push(*offset);
            *offset += text.chars().count();
            out.top_logprobs.push((!t.top.is_empty()).then(|| {
                let mut m = serde_json::Map::new();
                let chosen = (t.id, t.logprob);
                let entries = t
                    .top
                    .iter()
                    .chain((!t.top.iter().any(|a| a.0 == t.id)).then_some(&chosen));
                for &(id, lp) in entries {
                    m.entry(token_text(tokenizer, id))
                        .or_insert_with(|| serde_json::json!(lp));
                }
                m
            }));
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
    /// The alternatives asked for (`top_logprobs`), most likely first.
    pub top_logprobs: Vec<ChatTopLogprob>,
}

/// An alternative token.
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
                    top_logprobs: t
                        .top
                        .iter()
                        .map(|&(id, logprob)| {
                            let token = token_text(tokenizer, id);
                            ChatTopLogprob {
                                bytes: token.as_bytes().to_vec(),
                                token,
                                logprob,
                            }
                        })
                        .collect(),
                }
            })
            .collect();
        Self { content }
    }
}
