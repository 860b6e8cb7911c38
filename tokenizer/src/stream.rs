//! Incremental detokenization for streaming output.
//!
//! A byte-level token can end in the middle of a UTF-8 character, and some decoders change a
//! token's text depending on what precedes it (SentencePiece's leading space), so decoding each
//! token alone gives wrong text. The standard fix (as in TGI and vLLM): keep a short window of
//! ids, decode the window with and without the new token, and emit the difference once it no
//! longer ends in U+FFFD, the replacement character that marks an incomplete sequence.

use super::{Tokenizer, TokenizerError};

/// How many prompt ids [`DecodeStream::with_context`] keeps, enough for any decoder's
/// context-dependent rules.
const CONTEXT_IDS: usize = 5;

/// Per-sequence state of the incremental detokenizer. It does not borrow the tokenizer, so it
/// can live in a request's state next to an `Arc<Tokenizer>`.
#[derive(Debug, Clone, Default)]
pub struct DecodeStream {
    ids: Vec<u32>,
    /// Start of the window that is decoded for context.
    prefix_offset: usize,
    /// End of the ids whose text has been emitted.
    read_offset: usize,
    skip_special_tokens: bool,
}

impl DecodeStream {
    /// A stream for a sequence with no context; `skip_special_tokens` drops tokens such as
    /// `<|im_end|>` from the text, as chat servers do.
    pub fn new(skip_special_tokens: bool) -> Self {
        Self {
            skip_special_tokens,
            ..Self::default()
        }
    }

    /// A stream that continues after `context` (the prompt): its last few ids are decoded as
    /// context but never emitted, so the first generated token gets the right spacing.
    pub fn with_context(context: &[u32], skip_special_tokens: bool) -> Self {
        let ids = context[context.len().saturating_sub(CONTEXT_IDS)..].to_vec();
        let read_offset = ids.len();
        Self {
            ids,
            prefix_offset: 0,
            read_offset,
            skip_special_tokens,
        }
    }

    /// Adds one generated id; returns the new text once it forms complete characters.
    pub fn step(
        &mut self,
        tokenizer: &Tokenizer,
        id: u32,
    ) -> Result<Option<String>, TokenizerError> {
        self.ids.push(id);
        self.advance(tokenizer, false)
    }

    /// Emits whatever text is still held back (an incomplete character at the end of the
    /// sequence comes out as U+FFFD, as a non-streaming decode would show it).
    pub fn flush(&mut self, tokenizer: &Tokenizer) -> Result<Option<String>, TokenizerError> {
        self.advance(tokenizer, true)
    }

    fn advance(
        &mut self,
        tokenizer: &Tokenizer,
        force: bool,
    ) -> Result<Option<String>, TokenizerError> {
        let skip = self.skip_special_tokens;
        let prefix =
            tokenizer.decode_with(&self.ids[self.prefix_offset..self.read_offset], skip)?;
        let full = tokenizer.decode_with(&self.ids[self.prefix_offset..], skip)?;
        if full.len() <= prefix.len() || (!force && full.ends_with('\u{FFFD}')) {
            return Ok(None);
        }
        let delta = suffix_after(&prefix, &full).to_string();
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        // Forget ids that no window will decode again, so memory stays bounded.
        self.ids.drain(..self.prefix_offset);
        self.read_offset -= self.prefix_offset;
        self.prefix_offset = 0;
        Ok(if delta.is_empty() { None } else { Some(delta) })
    }
}

/// The part of `full` after `prefix`. Decoders normally extend the prefix's text; where one
/// rewrites it, the part after the longest common prefix (on a character boundary) is new.
fn suffix_after<'a>(prefix: &str, full: &'a str) -> &'a str {
    if let Some(rest) = full.strip_prefix(prefix) {
        return rest;
    }
    let common = prefix
        .char_indices()
        .zip(full.chars())
        .find(|((_, a), b)| a != b)
        .map_or(prefix.len().min(full.len()), |((i, _), _)| i);
    full.get(common..).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::suffix_after;

    #[test]
    fn suffix_after_handles_rewrites() {
        assert_eq!(suffix_after("ab", "abc"), "c");
        assert_eq!(suffix_after("ab", "aXc"), "Xc");
        assert_eq!(suffix_after("é", "éa"), "a");
        assert_eq!(suffix_after("", "x"), "x");
    }
}
