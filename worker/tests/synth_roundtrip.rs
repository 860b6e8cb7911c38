//! Generated checkpoints read back as Hugging Face checkpoints: the published tensor names and
//! shapes, config fields, a loadable tokenizer, and byte-for-byte determinism per seed.

use std::collections::BTreeMap;
use std::path::Path;

use moeflow_tokenizer::{ChatMessage, Tokenizer};
use moeflow_worker::config::Arch;
use moeflow_worker::synth::{init_model, Preset};

type Shapes = BTreeMap<String, Vec<usize>>;

fn read_shapes(dir: &Path) -> Shapes {
    let data = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&data).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            (name, view.shape().to_vec())
        })
        .collect()
}

fn read_config(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

fn put(m: &mut Shapes, name: String, shape: &[usize]) {
    m.insert(name, shape.to_vec());
}

/// The names and shapes of the published layouts, spelled out independently of the writer.
fn expected(arch: Arch) -> Shapes {
    let mut m = Shapes::new();
    let (v, h) = (1024, 64);
    put(&mut m, "model.embed_tokens.weight".into(), &[v, h]);
    put(&mut m, "model.norm.weight".into(), &[h]);
    put(&mut m, "lm_head.weight".into(), &[v, h]);
    match arch {
        Arch::Qwen3Moe => {
            for i in 0..4 {
                let p = format!("model.layers.{i}");
                put(&mut m, format!("{p}.input_layernorm.weight"), &[h]);
                put(&mut m, format!("{p}.post_attention_layernorm.weight"), &[h]);
                put(&mut m, format!("{p}.self_attn.q_proj.weight"), &[64, h]);
                put(&mut m, format!("{p}.self_attn.k_proj.weight"), &[32, h]);
                put(&mut m, format!("{p}.self_attn.v_proj.weight"), &[32, h]);
                put(&mut m, format!("{p}.self_attn.o_proj.weight"), &[h, 64]);
                put(&mut m, format!("{p}.self_attn.q_norm.weight"), &[16]);
                put(&mut m, format!("{p}.self_attn.k_norm.weight"), &[16]);
                put(&mut m, format!("{p}.mlp.gate.weight"), &[8, h]);
                for e in 0..8 {
                    put(
                        &mut m,
                        format!("{p}.mlp.experts.{e}.gate_proj.weight"),
                        &[64, h],
                    );
                    put(
                        &mut m,
                        format!("{p}.mlp.experts.{e}.up_proj.weight"),
                        &[64, h],
                    );
                    put(
                        &mut m,
                        format!("{p}.mlp.experts.{e}.down_proj.weight"),
                        &[h, 64],
                    );
                }
            }
        }
        Arch::DeepseekV3 => {
            for i in 0..3 {
                let p = format!("model.layers.{i}");
                let a = format!("{p}.self_attn");
                put(&mut m, format!("{p}.input_layernorm.weight"), &[h]);
                put(&mut m, format!("{p}.post_attention_layernorm.weight"), &[h]);
                put(&mut m, format!("{a}.q_a_proj.weight"), &[32, h]);
                put(&mut m, format!("{a}.q_a_layernorm.weight"), &[32]);
                put(&mut m, format!("{a}.q_b_proj.weight"), &[4 * (16 + 8), 32]);
                put(
                    &mut m,
                    format!("{a}.kv_a_proj_with_mqa.weight"),
                    &[16 + 8, h],
                );
                put(&mut m, format!("{a}.kv_a_layernorm.weight"), &[16]);
                put(
                    &mut m,
                    format!("{a}.kv_b_proj.weight"),
                    &[4 * (16 + 16), 16],
                );
                put(&mut m, format!("{a}.o_proj.weight"), &[h, 4 * 16]);
                if i == 0 {
                    put(&mut m, format!("{p}.mlp.gate_proj.weight"), &[96, h]);
                    put(&mut m, format!("{p}.mlp.up_proj.weight"), &[96, h]);
                    put(&mut m, format!("{p}.mlp.down_proj.weight"), &[h, 96]);
                } else {
                    put(&mut m, format!("{p}.mlp.gate.weight"), &[8, h]);
                    put(
                        &mut m,
                        format!("{p}.mlp.gate.e_score_correction_bias"),
                        &[8],
                    );
                    for e in 0..8 {
                        let q = format!("{p}.mlp.experts.{e}");
                        put(&mut m, format!("{q}.gate_proj.weight"), &[32, h]);
                        put(&mut m, format!("{q}.up_proj.weight"), &[32, h]);
                        put(&mut m, format!("{q}.down_proj.weight"), &[h, 32]);
                    }
                    let q = format!("{p}.mlp.shared_experts");
                    put(&mut m, format!("{q}.gate_proj.weight"), &[32, h]);
                    put(&mut m, format!("{q}.up_proj.weight"), &[32, h]);
                    put(&mut m, format!("{q}.down_proj.weight"), &[h, 32]);
                }
            }
        }
        Arch::Llama4 => {
            for i in 0..4 {
                let p = format!("model.layers.{i}");
                let f = format!("{p}.feed_forward");
                put(&mut m, format!("{p}.input_layernorm.weight"), &[h]);
                put(&mut m, format!("{p}.post_attention_layernorm.weight"), &[h]);
                put(&mut m, format!("{p}.self_attn.q_proj.weight"), &[64, h]);
                put(&mut m, format!("{p}.self_attn.k_proj.weight"), &[32, h]);
                put(&mut m, format!("{p}.self_attn.v_proj.weight"), &[32, h]);
                put(&mut m, format!("{p}.self_attn.o_proj.weight"), &[h, 64]);
                if i % 2 == 1 {
                    put(&mut m, format!("{f}.router.weight"), &[8, h]);
                    put(&mut m, format!("{f}.experts.gate_up_proj"), &[8, h, 64]);
                    put(&mut m, format!("{f}.experts.down_proj"), &[8, 32, h]);
                    put(
                        &mut m,
                        format!("{f}.shared_expert.gate_proj.weight"),
                        &[32, h],
                    );
                    put(
                        &mut m,
                        format!("{f}.shared_expert.up_proj.weight"),
                        &[32, h],
                    );
                    put(
                        &mut m,
                        format!("{f}.shared_expert.down_proj.weight"),
                        &[h, 32],
                    );
                } else {
                    put(&mut m, format!("{f}.gate_proj.weight"), &[96, h]);
                    put(&mut m, format!("{f}.up_proj.weight"), &[96, h]);
                    put(&mut m, format!("{f}.down_proj.weight"), &[h, 96]);
                }
            }
        }
    }
    m
}

#[test]
fn tiny_checkpoints_have_the_published_layout() {
    for arch in Arch::ALL {
        let dir = tempfile::tempdir().unwrap();
        let summary = init_model(arch, Preset::Tiny, dir.path(), 0).unwrap();
        let shapes = read_shapes(dir.path());
        assert_eq!(shapes, expected(arch), "{arch}");
        let params: usize = shapes.values().map(|s| s.iter().product::<usize>()).sum();
        assert_eq!(summary.params, params as u64);
        assert_eq!(summary.tensors, shapes.len());
        let size = std::fs::metadata(dir.path().join("model.safetensors"))
            .unwrap()
            .len();
        assert_eq!(summary.bytes, size);

        let config = read_config(dir.path());
        assert_eq!(config["vocab_size"], 1024);
        assert_eq!(config["hidden_size"], 64);
        assert_eq!(config["torch_dtype"], "float32");
        assert_eq!(config["tie_word_embeddings"], false);
        let (model_type, class) = match arch {
            Arch::Qwen3Moe => ("qwen3_moe", "Qwen3MoeForCausalLM"),
            Arch::DeepseekV3 => ("deepseek_v3", "DeepseekV3ForCausalLM"),
            Arch::Llama4 => ("llama4_text", "Llama4ForCausalLM"),
        };
        assert_eq!(config["model_type"], model_type);
        assert_eq!(config["architectures"][0], class);
        assert_eq!(
            config["model_type"]
                .as_str()
                .unwrap()
                .parse::<Arch>()
                .unwrap(),
            arch
        );

        let tok = Tokenizer::from_dir(dir.path()).unwrap();
        assert_eq!(tok.vocab_size(), summary.tokenizer_vocab_size);
        let eos = config["eos_token_id"].as_u64().unwrap() as u32;
        assert_eq!(tok.eos_token_ids()[0], eos);
        let prompt = tok
            .apply_chat_template(&[ChatMessage::new("user", "Hi")], true)
            .unwrap();
        assert_eq!(
            prompt,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert!(tok.encode_raw(&prompt).unwrap().iter().all(|&id| id < 1024));
    }
}

#[test]
fn config_fields_follow_the_published_configs() {
    let dir = tempfile::tempdir().unwrap();
    init_model(Arch::DeepseekV3, Preset::Tiny, dir.path(), 0).unwrap();
    let c = read_config(dir.path());
    assert_eq!(c["n_routed_experts"], 8);
    assert_eq!(c["n_group"], 4);
    assert_eq!(c["topk_group"], 2);
    assert_eq!(c["topk_method"], "noaux_tc");
    assert_eq!(c["scoring_func"], "sigmoid");
    assert_eq!(c["routed_scaling_factor"], 2.5);
    assert_eq!(c["num_key_value_heads"], c["num_attention_heads"]);
    assert_eq!(c["rope_scaling"]["type"], "yarn");
    assert_eq!(c["rope_scaling"]["factor"], 4.0);
    assert_eq!(c["rope_scaling"]["original_max_position_embeddings"], 512);

    let dir = tempfile::tempdir().unwrap();
    init_model(Arch::Llama4, Preset::Tiny, dir.path(), 0).unwrap();
    let c = read_config(dir.path());
    assert_eq!(c["no_rope_layers"], serde_json::json!([1, 1, 1, 0]));
    assert_eq!(c["moe_layers"], serde_json::json!([1, 3]));
    assert_eq!(c["interleave_moe_layer_step"], 2);
    assert_eq!(c["num_experts_per_tok"], 1);
    assert_eq!(c["attention_chunk_size"], 64);
    assert_eq!(c["rope_theta"], 500000.0);
    assert_eq!(c["rope_scaling"]["rope_type"], "llama3");

    let dir = tempfile::tempdir().unwrap();
    init_model(Arch::Qwen3Moe, Preset::Tiny, dir.path(), 0).unwrap();
    let c = read_config(dir.path());
    assert_eq!(c["num_experts"], 8);
    assert_eq!(c["num_experts_per_tok"], 2);
    assert_eq!(c["head_dim"], 16);
    assert_eq!(c["mlp_only_layers"], serde_json::json!([]));
    let t: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(t["model_max_length"], 2048);
    assert_eq!(t["eos_token"], "<|im_end|>");
}

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn same_seed_same_bytes_other_seed_other_weights() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let c = tempfile::tempdir().unwrap();
    init_model(Arch::Qwen3Moe, Preset::Tiny, a.path(), 7).unwrap();
    init_model(Arch::Qwen3Moe, Preset::Tiny, b.path(), 7).unwrap();
    init_model(Arch::Qwen3Moe, Preset::Tiny, c.path(), 8).unwrap();
    let (fa, fb, fc) = (files(a.path()), files(b.path()), files(c.path()));
    assert_eq!(
        fa.keys().collect::<Vec<_>>(),
        [
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json"
        ]
    );
    assert_eq!(fa, fb);
    assert_ne!(fa["model.safetensors"], fc["model.safetensors"]);
    for name in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        assert_eq!(fa[name], fc[name], "{name}");
    }
}

#[test]
fn a_tensor_does_not_depend_on_the_others() {
    // The embedding of DeepSeek and Qwen tiny checkpoints has the same name and shape, so with
    // the same seed it must hold the same values even though the other tensors differ.
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    init_model(Arch::Qwen3Moe, Preset::Tiny, a.path(), 3).unwrap();
    init_model(Arch::DeepseekV3, Preset::Tiny, b.path(), 3).unwrap();
    let da = std::fs::read(a.path().join("model.safetensors")).unwrap();
    let db = std::fs::read(b.path().join("model.safetensors")).unwrap();
    let ta = safetensors::SafeTensors::deserialize(&da).unwrap();
    let tb = safetensors::SafeTensors::deserialize(&db).unwrap();
    let name = "model.embed_tokens.weight";
    assert_eq!(
        ta.tensor(name).unwrap().data(),
        tb.tensor(name).unwrap().data()
    );
    let name = "model.layers.0.input_layernorm.weight";
    assert_eq!(
        ta.tensor(name).unwrap().data(),
        tb.tensor(name).unwrap().data()
    );
}
