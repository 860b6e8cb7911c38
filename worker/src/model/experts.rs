//! Reading one routed expert in whichever layout the checkpoint stores it.
//!
//! Published Qwen3-MoE and DeepSeek-V3 checkpoints store one tensor per expert and
//! projection (`experts.{e}.gate_proj.weight`, `[F, H]`); Llama-4 and checkpoints written by
//! current transformers store the layer's experts fused (`experts.gate_up_proj`,
//! `experts.down_proj`), with the expert index first.

use crate::error::Result;
use crate::nn::SwiGlu;
use crate::weights::{WeightStore, WeightsError};

/// How a fused expert tensor is laid out after its leading expert dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FusedLayout {
    /// `gate_up: [E, H, 2F]`, `down: [E, F, H]` (Llama-4 as published).
    InputMajor,
    /// `gate_up: [E, 2F, H]`, `down: [E, H, F]` (transformers' fused expert modules).
    OutputMajor,
}

/// Loads expert `e` from `{prefix}` (e.g. `model.layers.3.mlp.experts`), per-expert or fused.
/// `fused` is the layout the architecture's fused tensors use; it decides when the shapes
/// alone cannot (`H == 2F`).
pub(crate) fn load_expert(
    ws: &WeightStore,
    prefix: &str,
    e: u32,
    num_experts: usize,
    hidden: usize,
    ffn: usize,
    fused: FusedLayout,
) -> Result<SwiGlu> {
    let per_expert = format!("{prefix}.{e}");
    if ws.contains(&format!("{per_expert}.gate_proj.weight")) {
        return Ok(SwiGlu::load_split(ws, &per_expert, hidden, ffn)?);
    }
    let gu = format!("{prefix}.gate_up_proj");
    let down = format!("{prefix}.down_proj");
    let (Some(gu_shape), Some(down_shape)) = (ws.shape_of(&gu), ws.shape_of(&down)) else {
        // Neither layout: report the per-expert name the published checkpoints use.
        return Err(WeightsError::Missing {
            dir: ws.dir().to_path_buf(),
            name: format!("{per_expert}.gate_proj.weight"),
        }
        .into());
    };
    let (gu_shape, down_shape) = (gu_shape.to_vec(), down_shape.to_vec());
    let wrap = |name: &str| {
        let name = name.to_string();
        move |source: candle_core::Error| WeightsError::Tensor { name, source }
    };
    // gate_up: [E, H, 2F] (Llama-4 published) or [E, 2F, H] (transformers' fused modules).
    let input_major = [num_experts, hidden, 2 * ffn];
    let output_major = [num_experts, 2 * ffn, hidden];
    let gate_up = if gu_shape == input_major
        && (fused == FusedLayout::InputMajor || gu_shape != output_major)
    {
        ws.get_stacked(&gu, &gu_shape, e as usize)?
    } else if gu_shape == output_major {
        ws.get_stacked(&gu, &gu_shape, e as usize)?
            .t()
            .and_then(|t| t.contiguous())
            .map_err(wrap(&gu))?
    } else {
        return Err(WeightsError::Shape {
            path: ws.dir().to_path_buf(),
            name: gu,
            expected: vec![num_experts, hidden, 2 * ffn],
            actual: gu_shape,
        }
        .into());
    };
    // down: [E, F, H] (Llama-4 published) or [E, H, F].
    let (down_in, down_out) = ([num_experts, ffn, hidden], [num_experts, hidden, ffn]);
    let down_t =
        if down_shape == down_in && (fused == FusedLayout::InputMajor || down_shape != down_out) {
            ws.get_stacked(&down, &down_shape, e as usize)?
        } else if down_shape == down_out {
            ws.get_stacked(&down, &down_shape, e as usize)?
                .t()
                .and_then(|t| t.contiguous())
                .map_err(wrap(&down))?
        } else {
            return Err(WeightsError::Shape {
                path: ws.dir().to_path_buf(),
                name: down,
                expected: vec![num_experts, ffn, hidden],
                actual: down_shape,
            }
            .into());
        };
    SwiGlu::from_input_major(gate_up, down_t)
}
