//! A deterministic byte-level BPE tokenizer for the checkpoints moeflow generates.
//!
//! Generated checkpoints need a real `tokenizer.json` (the runtime must exercise the same code
//! path as for published models) but nothing may be downloaded, so we train one: a GPT-2/Qwen
//! style byte-level BPE learned with the `tokenizers` crate's own trainer on a built-in English
//! text, with Qwen's pre-tokenizer regex and ChatML special tokens. Training is deterministic:
//! the trainer breaks ties by token id and the serialized vocabulary is ordered by id, so the
//! same corpus and vocabulary size always give the same bytes.

use std::collections::HashSet;
use std::path::Path;

use serde_json::{json, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    SplitDelimiterBehavior, TokenizerBuilder,
};

use super::files::{GENERATION_CONFIG, TOKENIZER_CONFIG};
use super::TokenizerError;

/// The built-in training text: original English prose written for moeflow (public domain).
pub const BUILTIN_CORPUS: &str = include_str!("corpus.txt");

/// End of a document; also the padding token (as in Qwen).
pub const ENDOFTEXT: &str = "<|endoftext|>";
/// Start of a ChatML turn.
pub const IM_START: &str = "<|im_start|>";
/// End of a ChatML turn; the end-of-sequence token of chat generation.
pub const IM_END: &str = "<|im_end|>";

/// Qwen2/Qwen3's pre-tokenizer pattern (contractions, letters, single digits, punctuation,
/// newlines, spaces).
const SPLIT_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The ChatML template of generated checkpoints (Qwen style, without tools or thinking).
pub const CHATML_TEMPLATE: &str = "{%- for message in messages %}\n    {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n";

/// Ids of the three special tokens, which follow the regular vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialTokenIds {
    /// `<|endoftext|>`.
    pub endoftext: u32,
    /// `<|im_start|>`.
    pub im_start: u32,
    /// `<|im_end|>`.
    pub im_end: u32,
}

/// A trained tokenizer, ready to be written into a checkpoint directory.
#[derive(Debug, Clone)]
pub struct TrainedTokenizer {
    /// The serialized `tokenizer.json`.
    pub tokenizer_json: String,
    /// Number of ids, special tokens included (may be below the requested size when the
    /// corpus runs out of pairs to merge).
    pub vocab_size: usize,
    /// The special tokens' ids.
    pub special: SpecialTokenIds,
}

/// Trains a byte-level BPE on `corpus` with at most `vocab_size` ids (the 256 byte symbols,
/// the learned merges and the 3 special tokens). Pairs seen fewer than twice are not merged, so
/// a small corpus yields a smaller vocabulary than asked for.
pub fn train_byte_level_bpe(
    corpus: &str,
    vocab_size: usize,
) -> Result<TrainedTokenizer, TokenizerError> {
    let specials = [ENDOFTEXT, IM_START, IM_END];
    let base = ByteLevel::alphabet().len();
    if vocab_size < base + specials.len() {
        return Err(TokenizerError::Train(format!(
            "vocab_size {vocab_size} is below the {} byte symbols and special tokens",
            base + specials.len()
        )));
    }
    let train_err = |e: tokenizers::Error| TokenizerError::Train(e.to_string());

    let split = Split::new(
        SplitPattern::Regex(SPLIT_PATTERN.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(train_err)?;
    let byte_level = ByteLevel::new(false, false, false);
    let pre_tokenizer = PreTokenizerWrapper::Sequence(Sequence::new(vec![
        PreTokenizerWrapper::Split(split),
        PreTokenizerWrapper::ByteLevel(byte_level),
    ]));
    let mut builder = TokenizerBuilder::<
        BPE,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >::new()
    .with_model(BPE::default())
    .with_normalizer(None)
    .with_pre_tokenizer(Some(pre_tokenizer))
    .with_post_processor(Some(PostProcessorWrapper::ByteLevel(byte_level)))
    .with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevelDecoder::new(
        false, false, false,
    ))))
    .build()
    .map_err(train_err)?;

    let alphabet: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size - specials.len())
        .min_frequency(2)
        .show_progress(false)
        .initial_alphabet(alphabet)
        .build();
    builder
        .train(&mut trainer, std::iter::once(corpus))
        .map_err(train_err)?;

    let mut tokenizer = tokenizers::Tokenizer::from(builder);
    let added: Vec<AddedToken> = specials
        .iter()
        .map(|s| AddedToken::from(*s, true).normalized(false))
        .collect();
    tokenizer.add_special_tokens(added).map_err(train_err)?;
    let id = |s: &str| {
        tokenizer
            .token_to_id(s)
            .ok_or_else(|| TokenizerError::Train(format!("special token {s} has no id")))
    };
    let special = SpecialTokenIds {
        endoftext: id(ENDOFTEXT)?,
        im_start: id(IM_START)?,
        im_end: id(IM_END)?,
    };
    let tokenizer_json = tokenizer.to_string(true).map_err(train_err)?;
    Ok(TrainedTokenizer {
        tokenizer_json,
        vocab_size: tokenizer.get_vocab_size(true),
        special,
    })
}

impl TrainedTokenizer {
    /// `tokenizer_config.json` in the shape transformers writes for a Qwen-style tokenizer,
    /// with the ChatML template and `model_max_length` (the model's context length).
    pub fn tokenizer_config(&self, model_max_length: usize) -> Value {
        let entry = |content: &str| {
            json!({
                "content": content, "lstrip": false, "normalized": false,
                "rstrip": false, "single_word": false, "special": true
            })
        };
        let s = self.special;
        json!({
            "add_bos_token": false,
            "add_eos_token": false,
            "add_prefix_space": false,
            "added_tokens_decoder": {
                s.endoftext.to_string(): entry(ENDOFTEXT),
                s.im_start.to_string(): entry(IM_START),
                s.im_end.to_string(): entry(IM_END),
            },
            "additional_special_tokens": [IM_START, IM_END],
            "bos_token": null,
            "chat_template": CHATML_TEMPLATE,
            "clean_up_tokenization_spaces": false,
            "eos_token": IM_END,
            "errors": "replace",
            "model_max_length": model_max_length,
            "pad_token": ENDOFTEXT,
            "split_special_tokens": false,
            "tokenizer_class": "PreTrainedTokenizerFast",
            "unk_token": null,
        })
    }

    /// `generation_config.json`: generation stops at `<|im_end|>` or `<|endoftext|>`.
    pub fn generation_config(&self) -> Value {
        let s = self.special;
        json!({
            "bos_token_id": s.endoftext,
            "eos_token_id": [s.im_end, s.endoftext],
            "pad_token_id": s.endoftext,
        })
    }

    /// Writes `tokenizer.json`, `tokenizer_config.json` and `generation_config.json` into
    /// `dir` (which must exist).
    pub fn write_files(&self, dir: &Path, model_max_length: usize) -> Result<(), TokenizerError> {
        write(&dir.join("tokenizer.json"), self.tokenizer_json.as_bytes())?;
        write(
            &dir.join(TOKENIZER_CONFIG),
            pretty(&self.tokenizer_config(model_max_length)).as_bytes(),
        )?;
        write(
            &dir.join(GENERATION_CONFIG),
            pretty(&self.generation_config()).as_bytes(),
        )
    }
}

/// Pretty JSON with a trailing newline (`serde_json` maps are sorted, so output is stable).
/// Public so that a generated checkpoint's `config.json` is laid out like its tokenizer files.
pub fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    s.push('\n');
    s
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), TokenizerError> {
    std::fs::write(path, bytes).map_err(|source| TokenizerError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_is_deterministic_and_specials_follow_vocab() {
        let a = train_byte_level_bpe(BUILTIN_CORPUS, 1024).unwrap();
        let b = train_byte_level_bpe(BUILTIN_CORPUS, 1024).unwrap();
        assert_eq!(a.tokenizer_json, b.tokenizer_json);
        assert_eq!(a.vocab_size, 1024);
        assert_eq!(
            a.special,
            SpecialTokenIds {
                endoftext: 1021,
                im_start: 1022,
                im_end: 1023
            }
        );
    }

    #[test]
    fn tiny_vocabulary_is_rejected() {
        assert!(matches!(
            train_byte_level_bpe(BUILTIN_CORPUS, 100),
            Err(TokenizerError::Train(_))
        ));
    }
}
