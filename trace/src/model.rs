//! The trace model every source produces and every consumer reads.

use serde::{Deserialize, Serialize};

/// Expert id of a token that a recorder did not capture at one layer (e.g. the Mixtral
/// recorder drops rows whose two gate weights were exactly 0.5/0.5). Keeps tokens aligned
/// across layers; every statistic skips such entries instead of counting a fake expert.
pub const MISSING_EXPERT: u16 = u16::MAX;

/// Which pass of the model produced a selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Prefill,
    Decode,
}

impl Phase {
    pub const ALL: [Phase; 2] = [Phase::Prefill, Phase::Decode];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Prefill => "prefill",
            Phase::Decode => "decode",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Phase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "prefill" => Ok(Phase::Prefill),
            "decode" => Ok(Phase::Decode),
            other => Err(format!("phase `{other}`: expected prefill or decode")),
        }
    }
}

/// What a trace was recorded from. Sources that cannot know a field (the paper's JSON does not
/// state the expert count) infer it or take it from the user; a consumer checks every item
/// against the shape so that mixed models in one tree are refused file by file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelShape {
    /// Free-form model identity (`deepseek-ai/DeepSeek-V3`, a moeflow fingerprint, ...).
    pub model: Option<String>,
    /// All decoder layers, dense ones included; layer ids index `0..num_layers`.
    pub num_layers: usize,
    /// Routed experts per MoE layer.
    pub num_experts: usize,
    /// Experts selected per token (top-k).
    pub top_k: usize,
    /// Layer ids of the MoE layers, ascending.
    pub moe_layers: Vec<usize>,
}

/// Why an item does not fit the trace model or its source's shape. Names the layer, the
/// iteration or the token at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceModelError {
    #[error("layer {layer}: beyond the model's {num_layers} layers")]
    LayerRange { layer: usize, num_layers: usize },
    #[error("layer {layer} is not a MoE layer of the model")]
    NotMoeLayer { layer: usize },
    #[error("iteration {iteration} layer {layer} token {token}: expert {expert} out of range (num_experts {num_experts})")]
    ExpertRange {
        iteration: usize,
        layer: usize,
        token: usize,
        expert: u16,
        num_experts: usize,
    },
    #[error("iteration {iteration} layer {layer}: top_k {got}, the model selects {want}")]
    TopK {
        iteration: usize,
        layer: usize,
        got: usize,
        want: usize,
    },
    #[error("iteration {iteration} layer {layer}: {experts} expert ids is not a multiple of top_k {top_k}")]
    Ragged {
        iteration: usize,
        layer: usize,
        experts: usize,
        top_k: usize,
    },
    #[error(
        "iteration {iteration} layer {layer}: {weights} gate weights for {experts} expert ids"
    )]
    Weights {
        iteration: usize,
        layer: usize,
        weights: usize,
        experts: usize,
    },
    #[error("iteration {iteration}: a decode iteration has {tokens} tokens at layer {layer}, expected 1")]
    DecodeTokens {
        iteration: usize,
        layer: usize,
        tokens: usize,
    },
    #[error("counts: layer {layer} has {got} experts, the model has {want}")]
    CountsWidth {
        layer: usize,
        got: usize,
        want: usize,
    },
}

/// The selections of all tokens of one iteration at one MoE layer, row-major
/// (`experts[t * top_k + j]` is token `t`'s `j`-th choice, in the gate's order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerRouting {
    pub layer: u32,
    pub top_k: u16,
    pub experts: Vec<u16>,
    /// Gate weights parallel to `experts`, when the source has them.
    pub weights: Option<Vec<f32>>,
}

impl LayerRouting {
    pub fn num_tokens(&self) -> usize {
        if self.top_k == 0 {
            0
        } else {
            self.experts.len() / self.top_k as usize
        }
    }

    /// Token `t`'s selections (may contain [`MISSING_EXPERT`]).
    pub fn token(&self, t: usize) -> &[u16] {
        let k = self.top_k as usize;
        &self.experts[t * k..(t + 1) * k]
    }

    /// Whether token `t` was captured at this layer.
    pub fn present(&self, t: usize) -> bool {
        self.token(t).iter().all(|&e| e != MISSING_EXPERT)
    }
}

/// One forward pass of one request: the prefill (all prompt tokens) or one decode step (one
/// token). `layers` lists the MoE layers the source recorded, ascending by layer id; a token
/// index means the same token at every layer of the iteration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Iteration {
    pub phase: Phase,
    pub layers: Vec<LayerRouting>,
}

impl Iteration {
    pub fn num_tokens(&self) -> usize {
        self.layers
            .iter()
            .map(LayerRouting::num_tokens)
            .max()
            .unwrap_or(0)
    }

    pub fn layer(&self, layer: usize) -> Option<&LayerRouting> {
        self.layers.iter().find(|l| l.layer as usize == layer)
    }
}

/// Per-token selections of one request: element 0 the prefill (when recorded), then the
/// decode steps in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestTrace {
    /// Identity within its source (file path relative to the root, request id, ...).
    pub id: String,
    /// Workload label (benchmark/subject, a request field or header, a file name).
    pub workload: Option<String>,
    pub prompt_len: usize,
    /// Unix milliseconds when the request arrived and finished, when recorded live.
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    pub iterations: Vec<Iteration>,
}

/// Cumulative (token, expert) selection counts of a whole run, as SGLang's expert-distribution
/// recorder dumps them: no per-token data, so co-activation, layer-to-layer and token-to-token
/// statistics are not available from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CountsTrace {
    pub id: String,
    pub workload: Option<String>,
    /// The phase the run served, when the source says (e.g. a `prefill_`/`decode_` file name).
    pub phase: Option<Phase>,
    /// Per layer id (`0..num_layers`): the count per expert, `None` for dense layers.
    pub counts: Vec<Option<Vec<u64>>>,
}

/// What a source yields, one at a time, so memory does not grow with the number of requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TraceItem {
    Request(RequestTrace),
    Counts(CountsTrace),
}

impl TraceItem {
    pub fn id(&self) -> &str {
        match self {
            TraceItem::Request(r) => &r.id,
            TraceItem::Counts(c) => &c.id,
        }
    }

    pub fn workload(&self) -> Option<&str> {
        match self {
            TraceItem::Request(r) => r.workload.as_deref(),
            TraceItem::Counts(c) => c.workload.as_deref(),
        }
    }

    /// Checks every layer id, expert id, top-k and decode token count against `shape`, so
    /// that a consumer never computes a statistic from an item of another model.
    pub fn validate(&self, shape: &ModelShape) -> Result<(), TraceModelError> {
        match self {
            TraceItem::Request(r) => validate_request(r, shape),
            TraceItem::Counts(c) => validate_counts(c, shape),
        }
    }
}

fn check_layer(layer: usize, shape: &ModelShape) -> Result<(), TraceModelError> {
    if layer >= shape.num_layers {
        return Err(TraceModelError::LayerRange {
            layer,
            num_layers: shape.num_layers,
        });
    }
    if shape.moe_layers.binary_search(&layer).is_err() {
        return Err(TraceModelError::NotMoeLayer { layer });
    }
    Ok(())
}

pub(crate) fn validate_request(
    r: &RequestTrace,
    shape: &ModelShape,
) -> Result<(), TraceModelError> {
    for (i, it) in r.iterations.iter().enumerate() {
        for l in &it.layers {
            let layer = l.layer as usize;
            check_layer(layer, shape)?;
            if l.top_k as usize != shape.top_k {
                return Err(TraceModelError::TopK {
                    iteration: i,
                    layer,
                    got: l.top_k as usize,
                    want: shape.top_k,
                });
            }
            if l.top_k == 0 || l.experts.len() % l.top_k as usize != 0 {
                return Err(TraceModelError::Ragged {
                    iteration: i,
                    layer,
                    experts: l.experts.len(),
                    top_k: l.top_k as usize,
                });
            }
            if let Some(w) = &l.weights {
                if w.len() != l.experts.len() {
                    return Err(TraceModelError::Weights {
                        iteration: i,
                        layer,
                        weights: w.len(),
                        experts: l.experts.len(),
                    });
                }
            }
            if it.phase == Phase::Decode && l.num_tokens() != 1 {
                return Err(TraceModelError::DecodeTokens {
                    iteration: i,
                    layer,
                    tokens: l.num_tokens(),
                });
            }
            for (j, &e) in l.experts.iter().enumerate() {
                if e != MISSING_EXPERT && e as usize >= shape.num_experts {
                    return Err(TraceModelError::ExpertRange {
                        iteration: i,
                        layer,
                        token: j / l.top_k as usize,
                        expert: e,
                        num_experts: shape.num_experts,
                    });
                }
            }
        }
    }
    Ok(())
}

fn validate_counts(c: &CountsTrace, shape: &ModelShape) -> Result<(), TraceModelError> {
    for (layer, counts) in c.counts.iter().enumerate() {
        let Some(counts) = counts else { continue };
        check_layer(layer, shape)?;
        if counts.len() != shape.num_experts {
            return Err(TraceModelError::CountsWidth {
                layer,
                got: counts.len(),
                want: shape.num_experts,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> ModelShape {
        ModelShape {
            model: None,
            num_layers: 3,
            num_experts: 4,
            top_k: 2,
            moe_layers: vec![1, 2],
        }
    }

    fn request(experts: Vec<u16>, phase: Phase, layer: u32) -> TraceItem {
        TraceItem::Request(RequestTrace {
            id: "r".into(),
            workload: None,
            prompt_len: 2,
            started_ms: None,
            finished_ms: None,
            iterations: vec![Iteration {
                phase,
                layers: vec![LayerRouting {
                    layer,
                    top_k: 2,
                    experts,
                    weights: None,
                }],
            }],
        })
    }

    #[test]
    fn validation_names_what_is_wrong() {
        let s = shape();
        assert!(request(vec![0, 1, 2, 3], Phase::Prefill, 1)
            .validate(&s)
            .is_ok());
        assert!(request(vec![0, MISSING_EXPERT], Phase::Decode, 2)
            .validate(&s)
            .is_ok());
        assert_eq!(
            request(vec![0, 1], Phase::Prefill, 0).validate(&s),
            Err(TraceModelError::NotMoeLayer { layer: 0 })
        );
        assert!(matches!(
            request(vec![0, 4], Phase::Prefill, 1).validate(&s),
            Err(TraceModelError::ExpertRange {
                expert: 4,
                token: 0,
                ..
            })
        ));
        assert!(matches!(
            request(vec![0, 1, 2, 3], Phase::Decode, 1).validate(&s),
            Err(TraceModelError::DecodeTokens { tokens: 2, .. })
        ));
        assert!(matches!(
            request(vec![0, 1, 2], Phase::Prefill, 1).validate(&s),
            Err(TraceModelError::Ragged { .. })
        ));
    }
}
