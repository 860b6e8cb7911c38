//! Prompt tokenization off the hot path: long prompts go to the blocking pool.

use crate::error::RequestError;
use crate::state::FrontendState;

/// Prompts longer than this (bytes) are tokenized on the blocking pool, so a multi-megabyte
/// prompt does not stall the runtime thread that serves other streams.
const INLINE_TOKENIZE_BYTES: usize = 16 * 1024;

/// Tokenizes text: `raw` for text a chat template rendered (it has its special tokens),
/// otherwise with the tokenizer's own special tokens (a BOS where the model wants one).
pub async fn tokenize(
    state: &FrontendState,
    text: String,
    raw: bool,
    param: &str,
) -> Result<Vec<u32>, RequestError> {
    let long = text.len() > INLINE_TOKENIZE_BYTES;
    let tokenizer = std::sync::Arc::clone(&state.tokenizer);
    let encode = move || {
        if raw {
            tokenizer.encode_raw(&text)
        } else {
            tokenizer.encode(&text)
        }
    };
    let result = if long {
        tokio::task::spawn_blocking(encode)
            .await
            .map_err(|e| RequestError::Internal(format!("the tokenizer task failed: {e}")))?
    } else {
        encode()
    };
    result.map_err(|e| {
        RequestError::invalid(param, format!("the prompt could not be tokenized: {e}"))
    })
}
