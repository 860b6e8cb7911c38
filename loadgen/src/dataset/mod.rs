//! The prompts of a run: random words of a given length, a ShareGPT conversation file, or a
//! text / JSONL prompt file. Every source yields the same [`Prompt`], cycled or cut to the
//! number of prompts asked for.

mod file;
mod random;
mod sharegpt;
pub mod words;

use std::path::{Path, PathBuf};

use crate::error::LoadgenError;

pub use random::random_prompts;

/// One request's input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub text: String,
    /// Tokens the prompt is expected to have; reported only when the server gives no usage.
    pub estimated_tokens: u64,
    /// `max_tokens` of the request.
    pub output_len: u32,
}

/// Where the prompts come from (`--dataset-name`).
#[derive(Debug, Clone, PartialEq)]
pub enum DatasetSpec {
    /// Random words: lengths drawn uniformly from `len * (1 - range_ratio) ..= len * (1 +
    /// range_ratio)` (vLLM's `--random-range-ratio`).
    Random {
        input_len: u32,
        output_len: u32,
        range_ratio: f64,
    },
    /// A ShareGPT JSON file: the first turn of each conversation is the prompt; the output
    /// length is `output_len` or, if `None`, the estimated length of the second turn.
    ShareGpt {
        path: PathBuf,
        output_len: Option<u32>,
    },
    /// One prompt per line (plain text), or JSONL with `{"prompt": ..., "max_tokens": ...}`;
    /// lines without `max_tokens` ask for `output_len`.
    File { path: PathBuf, output_len: u32 },
}

/// `n` prompts from `spec`, deterministic for a given `seed`.
pub fn load(spec: &DatasetSpec, n: usize, seed: u64) -> Result<Vec<Prompt>, LoadgenError> {
    match spec {
        DatasetSpec::Random {
            input_len,
            output_len,
            range_ratio,
        } => random_prompts(n, *input_len, *output_len, *range_ratio, seed),
        DatasetSpec::ShareGpt { path, output_len } => {
            let text = read(path)?;
            let all = sharegpt::parse(&text, *output_len, seed)
                .map_err(|reason| dataset_error(path, reason))?;
            cycle(all, n, path)
        }
        DatasetSpec::File { path, output_len } => {
            let text = read(path)?;
            let all = file::parse(path, &text, *output_len)
                .map_err(|reason| dataset_error(path, reason))?;
            cycle(all, n, path)
        }
    }
}

/// Tokens in a text of unknown tokenization: about 4 characters per token, the usual rule
/// for English with BPE vocabularies.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4).max(1)
}

fn read(path: &Path) -> Result<String, LoadgenError> {
    std::fs::read_to_string(path).map_err(|source| LoadgenError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn dataset_error(path: &Path, reason: String) -> LoadgenError {
    LoadgenError::Dataset {
        path: path.to_path_buf(),
        reason,
    }
}

/// Repeats the prompts in order until there are `n` (a small file still drives a long run).
fn cycle(all: Vec<Prompt>, n: usize, path: &Path) -> Result<Vec<Prompt>, LoadgenError> {
    if all.is_empty() {
        return Err(dataset_error(path, "no usable prompt".into()));
    }
    Ok(all.iter().cycle().take(n).cloned().collect())
}
