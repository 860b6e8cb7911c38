//! Broken checkpoints give errors that name the file and the field or tensor, never a panic.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use moeflow_worker::model::{LoadOptions, Transformer};

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// A copy of a golden checkpoint to break.
fn copy(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(golden(name).join(f), dir.path().join(f)).expect("copy");
    }
    dir
}

fn load_err(dir: &Path) -> String {
    match Transformer::load(
        dir,
        LoadOptions {
            dtype: DType::F32,
            device: &Device::Cpu,
            experts: None,
        },
    ) {
        Ok(_) => panic!("{} loaded although it is broken", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// Rewrites model.safetensors with `edit` applied to the header (tensor name → entry).
fn edit_header(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).expect("read");
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let mut header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).expect("header");
    edit(&mut header);
    let mut h = serde_json::to_vec(&header).expect("json");
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(&path, out).expect("write");
}

const TENSOR: &str = "model.layers.0.self_attn.q_proj.weight";

#[test]
fn missing_or_malformed_config() {
    let d = copy("qwen3_moe");
    std::fs::remove_file(d.path().join("config.json")).expect("rm");
    let e = load_err(d.path());
    assert!(
        e.contains("config.json") && e.contains("cannot read"),
        "{e}"
    );
    std::fs::write(
        d.path().join("config.json"),
        "{\"model_type\": \"qwen3_moe\", ",
    )
    .expect("write");
    assert!(load_err(d.path()).contains("malformed JSON"));
    std::fs::write(d.path().join("config.json"), r#"{"model_type": "gpt_oss"}"#).expect("write");
    assert!(load_err(d.path()).contains("unknown architecture `gpt_oss`"));
}

#[test]
fn missing_tensor_is_named() {
    let d = copy("deepseek_v3");
    edit_header(d.path(), |h| {
        // Renamed, so the file stays valid and only the name is missing.
        if let Some(v) = h.remove("model.layers.1.mlp.experts.3.up_proj.weight") {
            h.insert("unused.renamed".into(), v);
        }
    });
    let e = load_err(d.path());
    assert!(
        e.contains("missing tensor `model.layers.1.mlp.experts.3.up_proj.weight`"),
        "{e}"
    );
}

#[test]
fn wrong_shape_and_dtype_are_named() {
    let d = copy("qwen3_moe");
    edit_header(d.path(), |h| {
        // Same bytes, other shape: [64, 64] read as [32, 128].
        h[TENSOR]["shape"] = serde_json::json!([32, 128]);
    });
    let e = load_err(d.path());
    assert!(
        e.contains(TENSOR) && e.contains("shape [32, 128]") && e.contains("model.safetensors"),
        "{e}"
    );
    let d = copy("qwen3_moe");
    edit_header(d.path(), |h| {
        h[TENSOR]["dtype"] = serde_json::json!("I32");
    });
    let e = load_err(d.path());
    assert!(e.contains(TENSOR) && e.contains("dtype"), "{e}");
}

#[test]
fn truncated_file_is_refused() {
    let d = copy("llama4");
    let path = d.path().join("model.safetensors");
    let bytes = std::fs::read(&path).expect("read");
    std::fs::write(&path, &bytes[..bytes.len() - 100]).expect("write");
    let e = load_err(d.path());
    assert!(
        e.contains("model.safetensors") && e.contains("truncated or malformed"),
        "{e}"
    );
    std::fs::write(&path, [1u8, 2, 3]).expect("write");
    assert!(load_err(d.path()).contains("truncated or malformed"));
}
