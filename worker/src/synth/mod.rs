//! Deterministic random-weight checkpoints in the exact Hugging Face layout.
//!
//! The models moeflow serves have 200B-1T parameters; tests, benchmarks and demos need small
//! stand-ins that exercise the same loading code. [`init_model`] writes `config.json` (the
//! published field names), `model.safetensors` (the published tensor names and shapes),
//! `tokenizer.json` with `tokenizer_config.json` (a byte-level BPE trained on a built-in text,
//! ChatML template) and `generation_config.json`. The same architecture, preset and seed always
//! give the same bytes.

pub mod deepseek_v3;
pub mod fp8;
pub mod llama4;
pub mod qwen3_moe;
pub mod tensors;
pub mod writer;

use std::fmt;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use moeflow_tokenizer::train::{pretty, train_byte_level_bpe, TrainedTokenizer, BUILTIN_CORPUS};
use moeflow_tokenizer::TokenizerError;

use crate::config::Arch;
use tensors::TensorSpec;

/// How big a generated model is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Preset {
    /// A few hundred thousand parameters: unit and golden tests, seconds to write.
    Tiny,
    /// About 140M parameters: benchmarks (the Qwen3-MoE one is the issue's `bench` model).
    Bench,
}

impl Preset {
    /// Both presets, in order.
    pub const ALL: [Preset; 2] = [Preset::Tiny, Preset::Bench];

    /// The preset's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Tiny => "tiny",
            Preset::Bench => "bench",
        }
    }

    /// The tokenizer size asked of the trainer. The built-in corpus supports a few thousand
    /// tokens, so `bench` gets what the corpus allows and its model vocabulary (32000) is padded
    /// beyond the tokenizer's, as real checkpoints' often are.
    fn tokenizer_vocab(self) -> usize {
        match self {
            Preset::Tiny => 1024,
            Preset::Bench => 32000,
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preset {
    type Err = SynthError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tiny" => Ok(Preset::Tiny),
            "bench" => Ok(Preset::Bench),
            other => Err(SynthError::UnknownPreset(other.to_string())),
        }
    }
}

/// Why a checkpoint could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// Creating or writing a file failed.
    #[error("writing {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Training or writing the tokenizer failed.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// A preset name that is not `tiny` or `bench`.
    #[error("unknown preset `{0}` (expected tiny or bench)")]
    UnknownPreset(String),
}

/// The special token ids that `config.json` records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vocab {
    /// `bos_token_id` (`<|endoftext|>`, as in Qwen).
    pub bos_token_id: u32,
    /// `eos_token_id` (`<|im_end|>`).
    pub eos_token_id: u32,
    /// `pad_token_id` (`<|endoftext|>`).
    pub pad_token_id: u32,
}

impl Vocab {
    fn of(tok: &TrainedTokenizer) -> Self {
        Self {
            bos_token_id: tok.special.endoftext,
            eos_token_id: tok.special.im_end,
            pad_token_id: tok.special.endoftext,
        }
    }
}

/// A model to write: its config.json and its tensors.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// The config.json contents.
    pub config: serde_json::Value,
    /// Every tensor of model.safetensors.
    pub tensors: Vec<TensorSpec>,
    /// Context length, also the tokenizer's `model_max_length`.
    pub max_position_embeddings: usize,
}

impl ModelSpec {
    /// The spec of `arch` at `preset` for a tokenizer of `tokenizer_vocab` ids.
    pub fn new(arch: Arch, preset: Preset, tokenizer_vocab: usize, vocab: &Vocab) -> Self {
        match arch {
            Arch::Qwen3Moe => {
                qwen3_moe::Qwen3MoeDims::for_preset(preset, tokenizer_vocab).spec(vocab)
            }
            Arch::DeepseekV3 => {
                deepseek_v3::DeepseekV3Dims::for_preset(preset, tokenizer_vocab).spec(vocab)
            }
            Arch::Llama4 => llama4::Llama4Dims::for_preset(preset, tokenizer_vocab).spec(vocab),
        }
    }

    /// Total number of parameters.
    pub fn params(&self) -> u64 {
        self.tensors.iter().map(|t| t.numel() as u64).sum()
    }
}

/// What [`init_model`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The architecture.
    pub arch: Arch,
    /// The preset.
    pub preset: Preset,
    /// The seed of the weights.
    pub seed: u64,
    /// The checkpoint directory.
    pub dir: PathBuf,
    /// Number of parameters.
    pub params: u64,
    /// Size of model.safetensors in bytes.
    pub bytes: u64,
    /// Number of tensors.
    pub tensors: usize,
    /// The model's vocabulary size (`vocab_size` in config.json).
    pub vocab_size: usize,
    /// The tokenizer's vocabulary size (special tokens included); at most `vocab_size`.
    pub tokenizer_vocab_size: usize,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} (seed {}): {} parameters in {} tensors, {} bytes, vocab {} (tokenizer {}) -> {}",
            self.arch,
            self.preset,
            self.seed,
            self.params,
            self.tensors,
            self.bytes,
            self.vocab_size,
            self.tokenizer_vocab_size,
            self.dir.display()
        )
    }
}

/// Writes a deterministic random-weight checkpoint of `arch` at `preset` into `out` (created
/// if missing; files of the same names are overwritten).
///
/// Matrices are drawn from N(0, 1/fan_in), RMSNorm weights near 1, DeepSeek's
/// `e_score_correction_bias` near 0; each tensor from its own ChaCha8 stream keyed by `seed`
/// and its name. Tensors are generated and written one chunk at a time, so memory stays far
/// below the file size; a progress bar shows on stderr when it is a terminal.
pub fn init_model(
    arch: Arch,
    preset: Preset,
    out: &Path,
    seed: u64,
) -> Result<Summary, SynthError> {
    std::fs::create_dir_all(out).map_err(|source| SynthError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let tok = train_byte_level_bpe(BUILTIN_CORPUS, preset.tokenizer_vocab())?;
    let vocab = Vocab::of(&tok);
    let spec = ModelSpec::new(arch, preset, tok.vocab_size, &vocab);
    let vocab_size = spec.config["vocab_size"].as_u64().map_or(0, |v| v as usize);

    let config_path = out.join("config.json");
    std::fs::write(&config_path, pretty(&spec.config)).map_err(|source| SynthError::Io {
        path: config_path,
        source,
    })?;
    tok.write_files(out, spec.max_position_embeddings)?;

    let total_bytes = spec.params() * 4;
    let progress = progress_bar(total_bytes, format!("{arch} {preset}"));
    let path = out.join("model.safetensors");
    tracing::info!(%arch, %preset, seed, params = spec.params(), path = %path.display(), "writing checkpoint");
    let bytes = writer::write_checkpoint(&path, &spec.tensors, seed, &progress)?;
    progress.finish_and_clear();

    Ok(Summary {
        arch,
        preset,
        seed,
        dir: out.to_path_buf(),
        params: spec.params(),
        bytes,
        tensors: spec.tensors.len(),
        vocab_size,
        tokenizer_vocab_size: tok.vocab_size,
    })
}

/// A byte-counting progress bar on stderr, hidden unless stderr is a terminal (logs and CI
/// output stay clean).
fn progress_bar(total: u64, message: String) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message);
    bar
}
