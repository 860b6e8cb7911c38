//! `quantization_config`: how a checkpoint stores its weights when not as plain floats.
//!
//! DeepSeek-V3/R1 and Kimi-K2 are published in fine-grained FP8: every projection weight
//! (`*_proj.weight`) is an `F8_E4M3` tensor with a `*_proj.weight_scale_inv` tensor holding
//! one `f32` multiplier per 128 x 128 tile. The weights are dequantized once, while loading,
//! into the runtime dtype; activations are not quantized (the model computes in the runtime
//! dtype), so `activation_scheme` does not matter here.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::ConfigError;

/// How a checkpoint's weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// F32, BF16 or F16 tensors, read as they are.
    #[default]
    Float,
    /// Block-wise FP8 (`quant_method: "fp8"`, `fmt: "e4m3"`): F8_E4M3 projection weights, each
    /// with one scale per `block[0]` rows x `block[1]` columns.
    Fp8Block { block: [usize; 2] },
}

impl WeightFormat {
    /// Reads `quantization_config` of `<dir>/config.json` (top level, also for multimodal
    /// configs); absent or null: [`WeightFormat::Float`].
    pub fn from_dir(dir: &Path) -> Result<Self, ConfigError> {
        let path = dir.join("config.json");
        Self::parse(&super::read_json(&path)?, &path)
    }

    /// Parses the `quantization_config` of a whole config document.
    pub fn parse(config: &Value, path: &Path) -> Result<Self, ConfigError> {
        let Some(q) = config.get("quantization_config").filter(|v| !v.is_null()) else {
            return Ok(Self::Float);
        };
        let invalid = |field: &str, msg: String| ConfigError::Invalid {
            path: PathBuf::from(path),
            field: format!("quantization_config.{field}"),
            msg,
        };
        let method = q
            .get("quant_method")
            .and_then(Value::as_str)
            .ok_or_else(|| ConfigError::Missing {
                path: path.to_path_buf(),
                field: "quantization_config.quant_method".into(),
            })?;
        if method != "fp8" {
            return Err(invalid(
                "quant_method",
                format!(
                    "`{method}` is not supported (block-wise `fp8` is); convert the checkpoint \
                     to bf16"
                ),
            ));
        }
        if let Some(fmt) = q.get("fmt").filter(|v| !v.is_null()) {
            if fmt.as_str() != Some("e4m3") {
                return Err(invalid("fmt", format!("{fmt} is not supported (e4m3 is)")));
            }
        }
        let Some(block) = q.get("weight_block_size").filter(|v| !v.is_null()) else {
            return Err(invalid(
                "weight_block_size",
                "missing: only block-wise FP8 (one scale per tile) is supported, not per-tensor \
                 or per-channel scales"
                    .into(),
            ));
        };
        let dims: Option<Vec<usize>> = block.as_array().map(|a| {
            a.iter()
                .filter_map(|v| v.as_u64().map(|v| v as usize))
                .filter(|&v| v > 0)
                .collect()
        });
        match dims.as_deref() {
            Some(&[rows, cols]) if block.as_array().is_some_and(|a| a.len() == 2) => {
                Ok(Self::Fp8Block {
                    block: [rows, cols],
                })
            }
            _ => Err(invalid(
                "weight_block_size",
                format!("{block} is not two positive integers"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<WeightFormat, ConfigError> {
        WeightFormat::parse(
            &serde_json::from_str(json).unwrap(),
            Path::new("config.json"),
        )
    }

    #[test]
    fn reads_deepseek_v3s_published_block_fp8() {
        let ds = r#"{"quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3",
            "quant_method": "fp8", "weight_block_size": [128, 128]}}"#;
        assert_eq!(
            parse(ds).unwrap(),
            WeightFormat::Fp8Block { block: [128, 128] }
        );
        assert_eq!(parse("{}").unwrap(), WeightFormat::Float);
        assert_eq!(
            parse(r#"{"quantization_config": null}"#).unwrap(),
            WeightFormat::Float
        );
    }

    #[test]
    fn refuses_other_schemes_naming_the_field() {
        for (json, field) in [
            (
                r#"{"quantization_config": {"quant_method": "awq"}}"#,
                "quant_method",
            ),
            (r#"{"quantization_config": {}}"#, "quant_method"),
            (
                r#"{"quantization_config": {"quant_method": "fp8", "fmt": "e5m2", "weight_block_size": [128, 128]}}"#,
                "fmt",
            ),
            (
                r#"{"quantization_config": {"quant_method": "fp8"}}"#,
                "weight_block_size",
            ),
            (
                r#"{"quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 0]}}"#,
                "weight_block_size",
            ),
            (
                r#"{"quantization_config": {"quant_method": "fp8", "weight_block_size": [128]}}"#,
                "weight_block_size",
            ),
        ] {
            let e = parse(json).unwrap_err().to_string();
            assert!(
                e.contains(&format!("quantization_config.{field}")),
                "{json}: {e}"
            );
        }
    }
}
