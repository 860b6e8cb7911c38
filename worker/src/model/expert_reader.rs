//! Reading single routed experts from a checkpoint after the model is loaded.
//!
//! A live re-placement gives a rank experts it did not load at start-up. Every rank maps the
//! same checkpoint (the weights are on every node, or on shared storage), so the rank reads the
//! experts it gains from its own copy instead of receiving them from a peer: no activation
//! traffic is displaced, no peer is involved, and the read goes through the same shape-checked
//! path as the initial load.

use std::path::Path;

use candle_core::{DType, Device};

use super::experts::{load_expert, FusedLayout};
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::nn::SwiGlu;
use crate::weights::WeightStore;

/// Opens a checkpoint's weights and reads any routed expert of any MoE layer.
pub struct ExpertReader {
    ws: WeightStore,
    config: ModelConfig,
    moe_layers: Vec<usize>,
}

impl std::fmt::Debug for ExpertReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpertReader")
            .field("dir", &self.ws.dir())
            .finish()
    }
}

impl ExpertReader {
    /// Maps the checkpoint in `dir` (config.json plus safetensors) for reads in `dtype`.
    pub fn open(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let config = ModelConfig::from_dir(dir)?;
        Ok(Self {
            moe_layers: config.shape().moe_layers,
            config,
            ws: WeightStore::open(dir, dtype, device)?
                .with_format(crate::config::WeightFormat::from_dir(dir)?),
        })
    }

    /// Reads routed expert `expert` of MoE layer `layer`, in the layout the model runs.
    pub fn load(&self, layer: usize, expert: u32) -> Result<SwiGlu> {
        if !self.moe_layers.contains(&layer) {
            return Err(ModelError::Input(format!(
                "layer {layer} is not a MoE layer of this model"
            )));
        }
        let (prefix, num_experts, hidden, ffn, fused) = match &self.config {
            ModelConfig::Qwen3Moe(c) => (
                format!("model.layers.{layer}.mlp.experts"),
                c.num_experts,
                c.hidden_size,
                c.moe_intermediate_size,
                FusedLayout::OutputMajor,
            ),
            ModelConfig::DeepseekV3(c) => (
                format!("model.layers.{layer}.mlp.experts"),
                c.n_routed_experts,
                c.hidden_size,
                c.moe_intermediate_size,
                FusedLayout::OutputMajor,
            ),
            ModelConfig::Llama4(c) => {
                let model = if self.ws.contains("language_model.model.embed_tokens.weight") {
                    "language_model.model."
                } else {
                    "model."
                };
                (
                    format!("{model}layers.{layer}.feed_forward.experts"),
                    c.num_local_experts,
                    c.hidden_size,
                    c.intermediate_size,
                    FusedLayout::InputMajor,
                )
            }
        };
        if expert as usize >= num_experts {
            return Err(ModelError::Input(format!(
                "layer {layer}: expert {expert} is out of range ({num_experts} experts)"
            )));
        }
        load_expert(&self.ws, &prefix, expert, num_experts, hidden, ffn, fused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Arch;
    use crate::model::{LoadOptions, Transformer};
    use crate::synth::{init_model, Preset};

    /// Every architecture: an expert read later equals the one the full load produced.
    #[test]
    fn reads_the_same_expert_as_the_full_load() {
        for arch in [Arch::Qwen3Moe, Arch::DeepseekV3, Arch::Llama4] {
            let dir = tempfile::tempdir().unwrap();
            init_model(arch, Preset::Tiny, dir.path(), 3).unwrap();
            let dev = Device::Cpu;
            let model = Transformer::load(
                dir.path(),
                LoadOptions {
                    dtype: DType::F32,
                    device: &dev,
                    experts: None,
                },
            )
            .unwrap();
            let reader = ExpertReader::open(dir.path(), DType::F32, &dev).unwrap();
            let layer = model.experts().layers().last().unwrap();
            let e = layer.num_experts() as u32 - 1;
            let want = layer.expert(e).unwrap();
            let got = reader.load(layer.layer(), e).unwrap();
            for (a, b) in [(want.gate_up(), got.gate_up()), (want.down(), got.down())] {
                let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
                assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{arch:?}");
            }
            let err = reader.load(layer.layer(), e + 1).unwrap_err().to_string();
            assert!(err.contains("out of range"), "{err}");
            let dense = model.shape().moe_layers.iter().max().map_or(0, |m| m + 1);
            assert!(reader.load(dense, 0).is_err());
        }
    }
}
