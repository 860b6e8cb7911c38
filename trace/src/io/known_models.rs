//! Shapes of the models the paper profiled (and Mixtral, whose real routing data ships in
//! `shared/data`), found by name in a path, for formats that do not state the expert count or
//! top-k themselves.

use std::path::Path;

use crate::model::ModelShape;

/// One published model architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownModel {
    pub name: &'static str,
    /// Normalised (lowercase alphanumeric) names a path component may contain.
    pub keys: &'static [&'static str],
    pub num_layers: usize,
    pub num_experts: usize,
    pub top_k: usize,
    /// Dense layers before the first MoE layer.
    pub first_moe: usize,
    /// MoE every `step` layers (Llama-4-Maverick interleaves dense and MoE layers).
    pub step: usize,
}

impl KnownModel {
    pub fn moe_layers(&self) -> Vec<usize> {
        (self.first_moe..self.num_layers)
            .step_by(self.step)
            .collect()
    }

    pub fn shape(&self) -> ModelShape {
        ModelShape {
            model: Some(self.name.to_string()),
            num_layers: self.num_layers,
            num_experts: self.num_experts,
            top_k: self.top_k,
            moe_layers: self.moe_layers(),
        }
    }
}

pub const KNOWN_MODELS: &[KnownModel] = &[
    KnownModel {
        name: "deepseek-ai/DeepSeek-V3",
        keys: &["deepseekv3", "deepseekr1"],
        num_layers: 61,
        num_experts: 256,
        top_k: 8,
        first_moe: 3,
        step: 1,
    },
    KnownModel {
        name: "moonshotai/Kimi-K2",
        keys: &["kimik2"],
        num_layers: 61,
        num_experts: 384,
        top_k: 8,
        first_moe: 1,
        step: 1,
    },
    KnownModel {
        name: "Qwen/Qwen3-235B-A22B",
        keys: &["qwen3235ba22b"],
        num_layers: 94,
        num_experts: 128,
        top_k: 8,
        first_moe: 0,
        step: 1,
    },
    KnownModel {
        name: "meta-llama/Llama-4-Maverick-17B-128E",
        keys: &["llama4maverick"],
        num_layers: 48,
        num_experts: 128,
        top_k: 1,
        first_moe: 1,
        step: 2,
    },
    KnownModel {
        name: "mistralai/Mixtral-8x7B",
        keys: &["mixtral8x7b"],
        num_layers: 32,
        num_experts: 8,
        top_k: 2,
        first_moe: 0,
        step: 1,
    },
];

fn normalise(s: &str) -> String {
    s.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// The known model whose name a single path component contains.
pub fn lookup(component: &str) -> Option<&'static KnownModel> {
    let n = normalise(component);
    KNOWN_MODELS
        .iter()
        .find(|m| m.keys.iter().any(|k| n.contains(k)))
}

/// The known model named by the nearest component of `path` (the file itself first).
pub fn find_in_path(path: &Path) -> Option<&'static KnownModel> {
    let comps: Vec<_> = path.components().collect();
    comps
        .iter()
        .rev()
        .find_map(|c| lookup(&c.as_os_str().to_string_lossy()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_models_by_path_component() {
        let m = find_in_path(Path::new(
            "/data/deepseek-v3-expert-counts/prefill_in512.json",
        ));
        assert_eq!(m.map(|m| m.num_experts), Some(256));
        assert_eq!(
            lookup("Llama-4-Maverick-17B-128E-Instruct").map(|m| m.moe_layers().len()),
            Some(24)
        );
        assert_eq!(
            lookup("DeepSeek-V3").map(|m| m.moe_layers().len()),
            Some(58)
        );
        assert!(lookup("gpt2").is_none());
    }
}
