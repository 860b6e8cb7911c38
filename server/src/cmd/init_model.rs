//! `moeflow init-model`: write a deterministic random-weight checkpoint in the Hugging Face
//! layout, so tests, benchmarks and demos need no download.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use moeflow_worker::config::Arch;
use moeflow_worker::synth::{self, Preset};

/// Arguments of `moeflow init-model`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Architecture: qwen3_moe, deepseek_v3 or llama4.
    #[arg(long, value_name = "ARCH")]
    pub arch: Arch,
    /// Size: tiny (tests, under a megabyte of weights) or bench (about 140M parameters).
    #[arg(long, value_name = "PRESET", default_value = "tiny")]
    pub preset: Preset,
    /// Output directory (created if missing; must be empty unless --force).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Seed of the weights: the same seed always gives the same bytes.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write into a non-empty directory, overwriting the checkpoint's files.
    #[arg(long)]
    pub force: bool,
    /// Store the projection weights in block-wise FP8 (F8_E4M3 plus per-tile scales and a
    /// `quantization_config`), the layout DeepSeek-V3/R1 are published in.
    #[arg(long)]
    pub fp8: bool,
    /// With `--fp8`: rows and columns of one scale tile (DeepSeek's: 128).
    #[arg(long, default_value_t = 128, requires = "fp8")]
    pub fp8_block: usize,
}

/// Writes the checkpoint and prints a one-line summary on stdout.
pub fn run(args: Args) -> anyhow::Result<()> {
    check_target(&args.out, args.force)?;
    if args.fp8_block == 0 {
        anyhow::bail!("--fp8-block must be positive");
    }
    let summary = synth::init_model(args.arch, args.preset, &args.out, args.seed)
        .with_context(|| format!("init-model into {}", args.out.display()))?;
    println!("{summary}");
    if args.fp8 {
        let n = synth::fp8::quantize_fp8(&args.out, [args.fp8_block, args.fp8_block])
            .with_context(|| format!("FP8 weights in {}", args.out.display()))?;
        println!(
            "{n} projection weights stored as F8_E4M3 with {0}x{0} tile scales",
            args.fp8_block
        );
    }
    Ok(())
}

/// Refuses to mix a new checkpoint into a directory that already holds files, unless forced.
fn check_target(out: &Path, force: bool) -> anyhow::Result<()> {
    if !out.exists() {
        return Ok(());
    }
    if !out.is_dir() {
        bail!("{} exists and is not a directory", out.display());
    }
    let mut entries =
        std::fs::read_dir(out).with_context(|| format!("reading {}", out.display()))?;
    if entries.next().is_some() && !force {
        bail!(
            "{} is not empty; pass --force to overwrite the checkpoint files in it",
            out.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_empty_directories_without_force() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_target(&dir.path().join("new"), false).is_ok());
        assert!(check_target(dir.path(), false).is_ok());
        std::fs::write(dir.path().join("x"), "x").unwrap();
        let err = check_target(dir.path(), false).unwrap_err().to_string();
        assert!(err.contains("--force"), "{err}");
        assert!(check_target(dir.path(), true).is_ok());
        assert!(check_target(&dir.path().join("x"), true).is_err());
    }
}
