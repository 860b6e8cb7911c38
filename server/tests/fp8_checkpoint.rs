//! Block-wise FP8 checkpoints (DeepSeek-V3's published layout) load and run: a model stored as
//! F8_E4M3 codes with tile scales generates exactly what the same model does from f32 weights
//! dequantized outside moeflow's loader (candle's own F8E4M3 decoding, tile arithmetic written
//! here), and without its `quantization_config` it is refused naming the tensor.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use candle_core::{DType, Device, Tensor};

const BIN: &str = env!("CARGO_BIN_EXE_moeflow");
const BLOCK: usize = 16;

fn moeflow(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("MOEFLOW_LOG", "error")
        .output()
        .unwrap()
}

fn generate(model: &Path) -> serde_json::Value {
    let out = moeflow(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt-ids",
        "5,17,42,99,7",
        "--max-tokens",
        "8",
        "--json",
    ]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `codes * scale of its tile`, for every tensor with a `_scale_inv` companion.
fn dequantize(tensors: &HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    let mut out = HashMap::new();
    for (name, t) in tensors {
        if name.ends_with("_scale_inv") {
            continue;
        }
        let Some(scale) = tensors.get(&format!("{name}_scale_inv")) else {
            out.insert(name.clone(), t.to_dtype(DType::F32).unwrap());
            continue;
        };
        assert_eq!(t.dtype(), DType::F8E4M3, "{name}");
        let (rows, cols) = t.dims2().unwrap();
        let codes: Vec<f32> = t
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let s: Vec<Vec<f32>> = scale.to_vec2().unwrap();
        let v: Vec<f32> = (0..rows * cols)
            .map(|i| codes[i] * s[i / cols / BLOCK][(i % cols) / BLOCK])
            .collect();
        out.insert(
            name.clone(),
            Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap(),
        );
    }
    out
}

#[test]
fn fp8_checkpoint_runs_as_its_dequantized_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let fp8 = tmp.path().join("fp8");
    let out = moeflow(&[
        "init-model",
        "--arch",
        "deepseek_v3",
        "--preset",
        "tiny",
        "--fp8",
        "--fp8-block",
        &BLOCK.to_string(),
        "--out",
        fp8.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fp8.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["quantization_config"]["quant_method"], "fp8");

    // The same model in f32, dequantized here.
    let f32_dir = tmp.path().join("f32");
    std::fs::create_dir(&f32_dir).unwrap();
    for entry in std::fs::read_dir(&fp8).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_owned();
        if name != "model.safetensors" && name != "config.json" {
            std::fs::copy(&p, f32_dir.join(name)).unwrap();
        }
    }
    let mut plain = config.clone();
    plain.as_object_mut().unwrap().remove("quantization_config");
    std::fs::write(f32_dir.join("config.json"), plain.to_string()).unwrap();
    let tensors =
        candle_core::safetensors::load(fp8.join("model.safetensors"), &Device::Cpu).unwrap();
    let quantized = tensors.keys().filter(|n| n.ends_with("_scale_inv")).count();
    assert!(quantized > 10, "{quantized} quantized tensors");
    candle_core::safetensors::save(&dequantize(&tensors), f32_dir.join("model.safetensors"))
        .unwrap();

    let (a, b) = (generate(&fp8), generate(&f32_dir));
    assert_eq!(a["token_ids"], b["token_ids"]);
    assert_eq!(a["logprobs"], b["logprobs"]);

    // FP8 tensors without the config that says how to scale them: refused by name.
    std::fs::write(fp8.join("config.json"), plain.to_string()).unwrap();
    let out = moeflow(&[
        "generate",
        "--model",
        fp8.to_str().unwrap(),
        "--prompt-ids",
        "1",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("quantization_config") && err.contains("_proj.weight"),
        "{err}"
    );
}
