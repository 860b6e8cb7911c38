//! Block-wise FP8 copies of generated checkpoints, in the layout DeepSeek-V3/R1 and Kimi-K2
//! are published in, so that the FP8 loading path runs in tests and on small machines.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::SynthError;

/// Largest finite E4M3 value: a tile's largest magnitude maps onto it.
const E4M3_MAX: f32 = 448.0;

/// Rewrites `<dir>/model.safetensors` with every 2-D `*_proj.weight` (the projections of
/// attention, dense MLPs, shared and routed experts; not embeddings, norms, router gates or
/// the LM head) as F8_E4M3 codes plus a `*_proj.weight_scale_inv` of f32 tile scales
/// (`block` rows x columns per tile, scale = the tile's largest magnitude / 448), and adds the
/// matching `quantization_config` to `<dir>/config.json`. Returns the number of quantized
/// tensors.
pub fn quantize_fp8(dir: &Path, block: [usize; 2]) -> Result<usize, SynthError> {
    let weights = dir.join("model.safetensors");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SynthError::Io { path, source }
    };
    let tensor_err = |name: &str, e: candle_core::Error| SynthError::Io {
        path: weights.clone(),
        source: std::io::Error::other(format!("tensor `{name}`: {e}")),
    };
    let tensors =
        candle_core::safetensors::load(&weights, &Device::Cpu).map_err(|e| tensor_err("*", e))?;
    let mut out: HashMap<String, Tensor> = HashMap::with_capacity(tensors.len() * 2);
    let mut quantized = 0;
    for (name, t) in tensors {
        let dims = t.dims().to_vec();
        if !(name.ends_with("_proj.weight") && dims.len() == 2) {
            out.insert(name, t);
            continue;
        }
        let (codes, scales) = quantize(&t, block).map_err(|e| tensor_err(&name, e))?;
        out.insert(format!("{name}_scale_inv"), scales);
        out.insert(name, codes);
        quantized += 1;
    }
    // Written to a temporary file and renamed over the original (by safetensors), which
    // leaves the temporary file's owner-only mode: the checkpoint keeps its own.
    let mode = std::fs::metadata(&weights)
        .map_err(io(&weights))?
        .permissions();
    candle_core::safetensors::save(&out, &weights).map_err(|e| tensor_err("*", e))?;
    std::fs::set_permissions(&weights, mode).map_err(io(&weights))?;

    let config = dir.join("config.json");
    let text = std::fs::read_to_string(&config).map_err(io(&config))?;
    let mut value: serde_json::Value = serde_json::from_str(&text).map_err(|e| SynthError::Io {
        path: config.clone(),
        source: std::io::Error::other(e),
    })?;
    if let Some(obj) = value.as_object_mut() {
        obj.insert(
            "quantization_config".into(),
            serde_json::json!({
                "activation_scheme": "dynamic",
                "fmt": "e4m3",
                "quant_method": "fp8",
                "weight_block_size": block,
            }),
        );
    }
    let text = serde_json::to_string_pretty(&value).map_err(|e| SynthError::Io {
        path: config.clone(),
        source: std::io::Error::other(e),
    })?;
    std::fs::write(&config, text + "\n").map_err(io(&config))?;
    Ok(quantized)
}

/// F8_E4M3 codes of `w / scale` and the `[ceil(rows / b0), ceil(cols / b1)]` f32 scales.
fn quantize(w: &Tensor, [br, bc]: [usize; 2]) -> candle_core::Result<(Tensor, Tensor)> {
    let (rows, cols) = w.dims2()?;
    let v = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let grid = [rows.div_ceil(br), cols.div_ceil(bc)];
    let mut scales = vec![0f32; grid[0] * grid[1]];
    for r in 0..rows {
        for c in 0..cols {
            let s = &mut scales[(r / br) * grid[1] + c / bc];
            *s = s.max(v[r * cols + c].abs());
        }
    }
    for s in &mut scales {
        *s = if *s > 0.0 { *s / E4M3_MAX } else { 1.0 };
    }
    let scaled: Vec<f32> = (0..rows * cols)
        .map(|i| v[i] / scales[(i / cols / br) * grid[1] + (i % cols) / bc])
        .collect();
    let codes = Tensor::from_vec(scaled, (rows, cols), &Device::Cpu)?.to_dtype(DType::F8E4M3)?;
    let scales = Tensor::from_vec(scales, (grid[0], grid[1]), &Device::Cpu)?;
    Ok((codes, scales))
}
