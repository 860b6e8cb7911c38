//! The runtime's tokenizer: a Hugging Face `tokenizer.json` plus the checkpoint's
//! `tokenizer_config.json` (chat template, special tokens) and `generation_config.json`
//! (stop tokens), so that prompts are encoded and chats rendered exactly as the reference
//! implementation does.
//!
//! [`train`] builds the deterministic byte-level BPE tokenizer that generated checkpoints use.
//!
//! A crate of its own so that the front ends, which tokenize and render chats, and the worker,
//! whose generated checkpoints carry a tokenizer, share it without the front ends depending on
//! model execution.

mod error;
mod files;
mod stream;
mod template;
pub mod train;

use std::path::{Path, PathBuf};

use minijinja::Value;
use serde::{Deserialize, Serialize};

pub use error::TokenizerError;
pub use files::TokenizerConfig;
pub use stream::DecodeStream;
pub use template::ChatTemplate;

use files::{CHAT_TEMPLATE_FILE, GENERATION_CONFIG, TOKENIZER_CONFIG};

/// The file name of the tokenizer proper.
const TOKENIZER_JSON: &str = "tokenizer.json";

/// One turn of a conversation, as OpenAI-style clients send it and chat templates read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The turn's text.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role and text.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A checkpoint's tokenizer, chat template and stop tokens.
#[derive(Debug)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    config: TokenizerConfig,
    chat_template: Option<ChatTemplate>,
    eos_token_ids: Vec<u32>,
    /// Where the files came from, for error messages.
    dir: PathBuf,
}

impl Tokenizer {
    /// Loads `tokenizer.json` (required), `tokenizer_config.json` and
    /// `generation_config.json` (optional) and `chat_template.jinja` (optional; it overrides
    /// the config's template, as in transformers) from a checkpoint directory.
    ///
    /// Stop tokens come from `generation_config.json`'s `eos_token_id`, else from the
    /// config's `eos_token`.
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let tok_path = dir.join(TOKENIZER_JSON);
        let text = std::fs::read_to_string(&tok_path).map_err(|source| TokenizerError::Io {
            path: tok_path.clone(),
            source,
        })?;
        let inner = Self::parse_tokenizer_json(&text)?;

        let config = match files::read_optional(&dir.join(TOKENIZER_CONFIG))? {
            Some(text) => files::parse_tokenizer_config(&text)?,
            None => {
                tracing::warn!(dir = %dir.display(), "no {TOKENIZER_CONFIG}: no chat template or special tokens");
                TokenizerConfig::default()
            }
        };
        let chat_template = match files::read_optional(&dir.join(CHAT_TEMPLATE_FILE))? {
            Some(src) => Some(ChatTemplate::new(&src, CHAT_TEMPLATE_FILE)?),
            None => config
                .chat_template
                .as_deref()
                .map(|src| ChatTemplate::new(src, TOKENIZER_CONFIG))
                .transpose()?,
        };
        let generation_eos = match files::read_optional(&dir.join(GENERATION_CONFIG))? {
            Some(text) => files::parse_generation_eos(&text)?,
            None => None,
        };
        let eos_token_ids = match generation_eos {
            Some(ids) => ids,
            None => match &config.eos_token {
                Some(tok) => vec![inner
                    .token_to_id(tok)
                    .ok_or_else(|| TokenizerError::Field {
                        file: TOKENIZER_CONFIG.to_string(),
                        field: "eos_token".to_string(),
                        problem: format!("names {tok:?}, which is not in {TOKENIZER_JSON}"),
                    })?],
                None => Vec::new(),
            },
        };
        let mut seen = std::collections::HashSet::new();
        let eos_token_ids = eos_token_ids
            .into_iter()
            .filter(|id| seen.insert(*id))
            .collect();
        Ok(Self {
            inner,
            config,
            chat_template,
            eos_token_ids,
            dir: dir.to_path_buf(),
        })
    }

    fn parse_tokenizer_json(text: &str) -> Result<tokenizers::Tokenizer, TokenizerError> {
        text.parse::<tokenizers::Tokenizer>().map_err(|e| {
            // A JSON syntax error is reported with its line and column; otherwise the
            // library's message says which part of the tokenizer it rejected.
            match files::parse_json(TOKENIZER_JSON, text) {
                Err(syntax) => syntax,
                Ok(_) => TokenizerError::Load {
                    file: TOKENIZER_JSON.to_string(),
                    message: e.to_string(),
                },
            }
        })
    }

    /// Encodes text, adding special tokens as the tokenizer's post-processor says (a BOS for
    /// Llama and DeepSeek, nothing for Qwen). Use [`Tokenizer::encode_raw`] for text rendered
    /// by the chat template, which already contains them.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.encode_with(text, true)
    }

    /// Encodes text without adding special tokens (as transformers' `apply_chat_template`
    /// tokenizes); special tokens written in the text are still recognised.
    pub fn encode_raw(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.encode_with(text, false)
    }

    fn encode_with(&self, text: &str, add_special: bool) -> Result<Vec<u32>, TokenizerError> {
        self.inner
            .encode_fast(text, add_special)
            .map(|enc| enc.get_ids().to_vec())
            .map_err(|e| TokenizerError::Encode(e.to_string()))
    }

    /// Decodes ids to text, keeping special tokens (transformers' default). Ids outside the
    /// tokenizer's vocabulary (a model's vocabulary is often padded beyond it) decode to
    /// nothing.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.decode_with(ids, false)
    }

    /// Decodes ids to text, optionally dropping special tokens.
    pub fn decode_with(
        &self,
        ids: &[u32],
        skip_special_tokens: bool,
    ) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| TokenizerError::Decode(e.to_string()))
    }

    /// The ids that end generation (from `generation_config.json`, else `eos_token`).
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    /// The id of a token's text, if the vocabulary (added tokens included) has it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Number of ids the tokenizer knows, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The special-token texts and template source from `tokenizer_config.json`.
    pub fn config(&self) -> &TokenizerConfig {
        &self.config
    }

    /// The underlying `tokenizers` tokenizer, for what this wrapper does not expose.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Whether the checkpoint has a chat template.
    pub fn has_chat_template(&self) -> bool {
        self.chat_template.is_some()
    }

    /// Renders a conversation with the checkpoint's chat template, as transformers'
    /// `apply_chat_template(messages, tokenize=False, add_generation_prompt=...)` does.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        self.apply_chat_template_with(messages, add_generation_prompt, &())
    }

    /// Like [`Tokenizer::apply_chat_template`] for any serializable messages (for example
    /// with `tool_calls`) and with extra template variables: `extra` serializes to a map (or
    /// `()` for none) such as `{"enable_thinking": false}` or `{"tools": [...]}`, whose entries
    /// override the defaults. Map order is kept, which matters for `tools | tojson`.
    pub fn apply_chat_template_with(
        &self,
        messages: &(impl Serialize + ?Sized),
        add_generation_prompt: bool,
        extra: &(impl Serialize + ?Sized),
    ) -> Result<String, TokenizerError> {
        let template =
            self.chat_template
                .as_ref()
                .ok_or_else(|| TokenizerError::NoChatTemplate {
                    dir: self.dir.clone(),
                })?;
        let mut ctx: Vec<(String, Value)> = vec![
            ("messages".into(), Value::from_serialize(messages)),
            ("tools".into(), Value::from(())),
            ("documents".into(), Value::from(())),
            (
                "add_generation_prompt".into(),
                Value::from(add_generation_prompt),
            ),
        ];
        let specials = [
            ("bos_token", &self.config.bos_token),
            ("eos_token", &self.config.eos_token),
            ("pad_token", &self.config.pad_token),
            ("unk_token", &self.config.unk_token),
        ];
        for (name, tok) in specials {
            if let Some(tok) = tok {
                ctx.push((name.into(), Value::from(tok.as_str())));
            }
        }
        let extra = Value::from_serialize(extra);
        if !extra.is_none() && !extra.is_undefined() {
            if extra.kind() != minijinja::value::ValueKind::Map {
                return Err(TokenizerError::TemplateRender(
                    "extra template variables are not a map".into(),
                ));
            }
            let keys = extra
                .try_iter()
                .map_err(|e| TokenizerError::TemplateRender(e.to_string()))?;
            for key in keys {
                let Some(name) = key.as_str().map(str::to_string) else {
                    return Err(TokenizerError::TemplateRender(
                        "extra template variable names must be strings".into(),
                    ));
                };
                let value = extra.get_item(&key).unwrap_or_default();
                ctx.push((name, value));
            }
        }
        template.render(Value::from_iter(ctx))
    }
}

#[cfg(test)]
mod tests;
