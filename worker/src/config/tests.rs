use std::path::Path;

use super::*;

fn parse(json: &str) -> Result<ModelConfig, ConfigError> {
    ModelConfig::from_json_str(json, Path::new("config.json"))
}

const QWEN: &str = r#"{"model_type":"qwen3_moe","vocab_size":512,"hidden_size":64,
 "intermediate_size":96,"num_hidden_layers":3,"num_attention_heads":4,"num_key_value_heads":2,
 "head_dim":16,"num_experts":8,"num_experts_per_tok":2,"moe_intermediate_size":32,
 "mlp_only_layers":[1],"norm_topk_prob":true,"rope_theta":10000.0,"rope_scaling":null}"#;

#[test]
fn qwen3_moe_layers_follow_mlp_only_layers() {
    let ModelConfig::Qwen3Moe(c) = parse(QWEN).unwrap() else {
        panic!("wrong arch")
    };
    assert_eq!(c.shape().moe_layers, vec![0, 2]);
    assert_eq!(c.rope.theta, 10000.0);
}

#[test]
fn rope_parameters_and_rope_theta_agree() {
    let new_style = QWEN.replace(
        r#""rope_theta":10000.0,"rope_scaling":null"#,
        r#""rope_parameters":{"rope_type":"default","rope_theta":10000.0}"#,
    );
    assert_eq!(parse(QWEN).unwrap(), parse(&new_style).unwrap());
}

#[test]
fn errors_name_the_field() {
    let e = parse(&QWEN.replace(r#""hidden_size":64,"#, "")).unwrap_err();
    assert!(e.to_string().contains("hidden_size"), "{e}");
    let e = parse(&QWEN.replace(
        r#""num_experts_per_tok":2"#,
        r#""num_experts_per_tok":"two""#,
    ))
    .unwrap_err();
    assert!(e.to_string().contains("num_experts_per_tok"), "{e}");
    let e = parse(&QWEN.replace("qwen3_moe", "mixtral")).unwrap_err();
    assert!(e.to_string().contains("unknown architecture"), "{e}");
    let e = parse("{not json").unwrap_err();
    assert!(e.to_string().contains("malformed JSON"), "{e}");
}

#[test]
fn yarn_matches_deepseek_reference_values() {
    // DeepSeek-V3's published rope settings: factor 40 over 4096 positions.
    let src = ConfigSource::new(
        serde_json::json!({"max_position_embeddings": 163840, "rope_theta": 10000.0,
            "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
            "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}}),
        Path::new("config.json"),
    )
    .unwrap();
    let rope = RopeConfig::parse(&src, 1.0).unwrap();
    let (inv, att) = rope.inv_freq(64);
    assert_eq!(inv.len(), 32);
    // mscale == mscale_all_dim: cos/sin are unscaled, the softmax scale takes mscale^2.
    assert!((att - 1.0).abs() < 1e-6);
    let m = 0.1 * 40f64.ln() + 1.0;
    assert!((rope.yarn_softmax_scale() - m * m).abs() < 1e-9);
    // Highest frequency is extrapolated (unchanged), lowest interpolated by the factor.
    assert!((inv[0] - 1.0).abs() < 1e-6);
    let base_last = 1.0 / 10000f64.powf(62.0 / 64.0);
    assert!(((inv[31] as f64) - base_last / 40.0).abs() < 1e-9);
}

#[test]
fn multimodal_llama4_reads_text_config() {
    let cfg = parse(
        r#"{"model_type":"llama4","architectures":["Llama4ForConditionalGeneration"],
        "text_config":{"model_type":"llama4_text","vocab_size":512,"hidden_size":64,
        "intermediate_size":32,"intermediate_size_mlp":96,"num_hidden_layers":4,
        "num_attention_heads":4,"num_key_value_heads":2,"head_dim":16,"num_local_experts":8,
        "interleave_moe_layer_step":2,"rope_theta":500000.0}}"#,
    )
    .unwrap();
    let ModelConfig::Llama4(c) = cfg else {
        panic!("wrong arch")
    };
    assert_eq!(c.moe_layers, vec![1, 3]);
    assert_eq!(c.use_rope, vec![true, true, true, false]);
}
