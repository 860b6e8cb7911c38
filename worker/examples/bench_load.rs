//! Peak resident memory while loading a checkpoint (BENCHMARKS.md, "load memory").
//!
//! ```text
//! cargo run --release -p moeflow-worker --example bench_load -- /tmp/bench-qwen3 [f32|bf16]
//! ```
//!
//! Loads the checkpoint once in a fresh process and prints one JSON object: the peak
//! resident set (`VmHWM` of /proc/self/status) after loading, the resident set before, the
//! bytes of tensor data in the safetensors files, the bytes of the loaded weights in the
//! runtime dtype, and the ratio of the peak growth to the loaded weights. Linux only.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device};
use moeflow_worker::model::{LoadOptions, Transformer};
use moeflow_worker::weights::WeightStore;

/// A `kB` field of /proc/self/status, in bytes.
fn status_bytes(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("bench_load: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "/tmp/bench-qwen3".into()));
    let dtype = match args.next().as_deref() {
        None | Some("f32") => DType::F32,
        Some("bf16") => DType::BF16,
        Some(other) => return Err(format!("unknown dtype {other} (f32 or bf16)").into()),
    };
    let file_bytes = WeightStore::open(&dir, dtype, &Device::Cpu)?.file_bytes() as u64;
    let files_on_disk: u64 = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
        .filter_map(|e| e.metadata().ok().map(|m| m.len()))
        .sum();
    let before = status_bytes("VmRSS:").ok_or("no VmRSS in /proc/self/status")?;
    let t = Instant::now();
    let model = Transformer::load(
        &dir,
        LoadOptions {
            dtype,
            device: &Device::Cpu,
            experts: None,
        },
    )?;
    let load_s = t.elapsed().as_secs_f64();
    let peak = status_bytes("VmHWM:").ok_or("no VmHWM in /proc/self/status")?;
    let after = status_bytes("VmRSS:").ok_or("no VmRSS in /proc/self/status")?;
    // The loaded weights in the runtime dtype: the file's tensor data rescaled from the
    // file's element size (f32 here) to the runtime one.
    let weights = file_bytes * dtype.size_in_bytes() as u64 / 4;
    let report = serde_json::json!({
        "model": dir.display().to_string(),
        "dtype": format!("{dtype:?}"),
        "safetensors_file_bytes": files_on_disk,
        "tensor_data_bytes": file_bytes,
        "loaded_weight_bytes": weights,
        "rss_before_bytes": before,
        "peak_rss_bytes": peak,
        "rss_after_bytes": after,
        "peak_over_weights": (peak - before) as f64 / weights as f64,
        "peak_over_file": peak as f64 / files_on_disk as f64,
        "load_s": load_s,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    drop(model);
    Ok(())
}
