//! Compares moeflow's logits with Hugging Face transformers' on tiny checkpoints that
//! transformers itself wrote (`tools/golden/make_golden.py`): the whole prompt in one pass,
//! then 16 greedy decode steps through the KV cache.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use moeflow_worker::kv_cache::SeqId;
use moeflow_worker::model::{ForwardCtx, LoadOptions, LogitsMode, SeqInput, Transformer};
use moeflow_worker::moe::{LocalDispatch, Routing, RoutingObserver};
use safetensors::tensor::{Dtype, SafeTensors};

const TOLERANCE: f32 = 1e-4;

fn golden_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

struct Golden {
    tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

impl Golden {
    fn load(dir: &Path) -> Self {
        let bytes = std::fs::read(dir.join("golden.safetensors")).expect("golden.safetensors");
        let st = SafeTensors::deserialize(&bytes).expect("valid golden file");
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let data = view.data();
            let v: Vec<f32> = match view.dtype() {
                Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                Dtype::I64 => data
                    .chunks_exact(8)
                    .map(|c| {
                        i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                    })
                    .collect(),
                Dtype::I32 => data
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
                    .collect(),
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            tensors.insert(name.clone(), (view.shape().to_vec(), v));
        }
        Self { tensors }
    }

    fn f32s(&self, name: &str) -> &(Vec<usize>, Vec<f32>) {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("golden tensor {name}"))
    }

    fn ids(&self, name: &str) -> Vec<u32> {
        self.f32s(name).1.iter().map(|&v| v as u32).collect()
    }
}

/// Records the prompt's routing per MoE layer.
#[derive(Default)]
struct Recorder {
    layers: BTreeMap<usize, Routing>,
}

impl RoutingObserver for Recorder {
    fn observe(&mut self, layer: usize, _spans: &[(SeqId, Range<usize>, bool)], routing: &Routing) {
        self.layers.entry(layer).or_insert_with(|| routing.clone());
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn check(name: &str) {
    let dir = golden_dir(name);
    let golden = Golden::load(&dir);
    let model = Transformer::load(
        &dir,
        LoadOptions {
            dtype: DType::F32,
            device: &Device::Cpu,
            experts: None,
        },
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    let prompt = golden.ids("prompt_ids");
    let vocab = model.shape().vocab_size;
    let mut kv = model.kv_cache(8, 16);
    let mut dispatch = LocalDispatch;
    let mut rec = Recorder::default();
    let logits = {
        let mut ctx = ForwardCtx {
            dispatch: &mut dispatch,
            observer: Some(&mut rec),
        };
        let batch = [SeqInput {
            seq: 1,
            tokens: prompt.clone(),
            start: 0,
            prompt: true,
        }];
        model
            .forward(&batch, &mut kv, &mut ctx, LogitsMode::All)
            .unwrap()
    };
    let ours = logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (shape, want) = golden.f32s("prefill_logits");
    assert_eq!(shape, &vec![prompt.len(), vocab]);

    // Routing first: a wrong expert choice explains a logits mismatch better than the diff.
    for (layer, routing) in &rec.layers {
        let key = format!("prefill_router_ids_layer{layer}");
        if !golden.tensors.contains_key(&key) {
            continue;
        }
        let want_ids = golden.ids(&key);
        for t in 0..prompt.len() {
            let mut a = routing.token(t).0.to_vec();
            let mut b = want_ids[t * routing.top_k..(t + 1) * routing.top_k].to_vec();
            a.sort_unstable();
            b.sort_unstable();
            assert_eq!(a, b, "{name}: layer {layer} token {t}: experts differ");
        }
    }
    let d = max_abs_diff(&ours, want);
    assert!(d < TOLERANCE, "{name}: prefill logits differ by {d}");

    let decode_ids = golden.ids("decode_ids");
    let (_, want_decode) = golden.f32s("decode_logits");
    for (step, &tok) in decode_ids.iter().enumerate() {
        let mut ctx = ForwardCtx {
            dispatch: &mut dispatch,
            observer: None,
        };
        let batch = [SeqInput {
            seq: 1,
            tokens: vec![tok],
            start: prompt.len() + step,
            prompt: false,
        }];
        let l = model
            .forward(&batch, &mut kv, &mut ctx, LogitsMode::LastPerSeq)
            .unwrap();
        let ours = l.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = &want_decode[step * vocab..(step + 1) * vocab];
        let d = max_abs_diff(&ours, want);
        assert!(
            d < TOLERANCE,
            "{name}: decode step {step} logits differ by {d}"
        );
        if step + 1 < decode_ids.len() {
            let argmax = moeflow_worker::sampling::argmax(&ours) as u32;
            assert_eq!(
                argmax,
                decode_ids[step + 1],
                "{name}: greedy token differs at step {step}"
            );
        }
    }
}

#[test]
fn qwen3_moe_matches_transformers() {
    check("qwen3_moe");
}

#[test]
fn qwen3_moe_alternate_layout_matches_transformers() {
    check("qwen3_moe_alt_layout");
}

#[test]
fn deepseek_v3_matches_transformers() {
    check("deepseek_v3");
}

#[test]
fn deepseek_v3_without_q_lora_matches_transformers() {
    check("deepseek_v3_noqlora");
}

#[test]
fn llama4_matches_transformers() {
    check("llama4");
}
