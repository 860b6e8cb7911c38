//! The placement plan document and its validation.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The `format` value of plans this version reads and writes.
pub const PLAN_FORMAT: &str = "moeflow.placement/v1";

/// Why a plan cannot be used. Errors name the layer and rank at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("{path}: cannot read: {msg}")]
    Io { path: String, msg: String },
    #[error("{path}: malformed plan JSON: {msg}")]
    Json { path: String, msg: String },
    #[error("format is `{0}`, expected `{PLAN_FORMAT}`")]
    Format(String),
    #[error("num_ranks must be positive")]
    NoRanks,
    #[error("layer {layer}: has {got} rank lists, num_ranks is {want}")]
    RankCount {
        layer: usize,
        got: usize,
        want: usize,
    },
    #[error(
        "layer {layer} rank {rank}: expert {expert} is out of range (num_experts {num_experts})"
    )]
    ExpertRange {
        layer: usize,
        rank: usize,
        expert: u32,
        num_experts: usize,
    },
    #[error("layer {layer} rank {rank}: expert {expert} listed twice")]
    Duplicate {
        layer: usize,
        rank: usize,
        expert: u32,
    },
    #[error("layer {layer}: expert {expert} is not hosted on any rank")]
    Unhosted { layer: usize, expert: u32 },
    #[error("layer {layer} rank {rank}: hosts {count} experts, over its {slots} slots")]
    Slots {
        layer: usize,
        rank: usize,
        count: usize,
        slots: usize,
    },
    #[error("layer key `{0}` is not a layer index")]
    LayerKey(String),
    #[error("plan is for {plan} experts per layer, the model has {model}")]
    ModelExperts { plan: usize, model: usize },
    #[error("layer {layer} is a MoE layer of the model but missing from the plan")]
    MissingLayer { layer: usize },
    #[error("layer {layer} is in the plan but is not a MoE layer of the model")]
    ExtraLayer { layer: usize },
    #[error("plan is for {plan} ranks, the group has {group}")]
    GroupSize { plan: usize, group: usize },
}

/// What a plan must fit: the model's MoE layers and expert count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanTarget {
    pub num_experts: usize,
    pub moe_layers: Vec<usize>,
}

/// A placement plan: for every MoE layer, the experts each rank hosts (replicas allowed).
///
/// Layer keys are the model's layer indices as strings, as in the JSON document, so that a
/// plan reads the same in every tool and language.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlacementPlan {
    pub format: String,
    pub num_ranks: usize,
    pub num_experts: usize,
    pub layers: BTreeMap<String, Vec<Vec<u32>>>,
    /// Upper bound of experts per rank per layer, when the deployment has fixed slots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots_per_rank: Option<usize>,
    /// Identity of the model the plan was made for (e.g. its `model_type` and path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The planner that produced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    /// The data it was planned from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl PlacementPlan {
    /// Experts `0..E/N` on rank 0, the next block on rank 1, and so on (the remainder spread
    /// one each over the first ranks), the same for every MoE layer.
    pub fn contiguous(target: &PlanTarget, num_ranks: usize) -> Result<Self, PlanError> {
        if num_ranks == 0 {
            return Err(PlanError::NoRanks);
        }
        let e = target.num_experts;
        let mut ranks = Vec::with_capacity(num_ranks);
        let (base, extra) = (e / num_ranks, e % num_ranks);
        let mut next = 0u32;
        for r in 0..num_ranks {
            let n = base + usize::from(r < extra);
            ranks.push((next..next + n as u32).collect::<Vec<u32>>());
            next += n as u32;
        }
        let layers = target
            .moe_layers
            .iter()
            .map(|l| (l.to_string(), ranks.clone()))
            .collect();
        let plan = Self {
            format: PLAN_FORMAT.to_string(),
            num_ranks,
            num_experts: e,
            layers,
            slots_per_rank: None,
            model: None,
            algorithm: Some("contiguous".into()),
            source: None,
        };
        plan.validate()?;
        Ok(plan)
    }

    /// Reads and validates a plan file (the model is checked separately, by
    /// [`PlacementPlan::check_target`]).
    pub fn from_file(path: &Path) -> Result<Self, PlanError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| PlanError::Io {
            path: p.clone(),
            msg: e.to_string(),
        })?;
        let plan: Self = serde_json::from_str(&text).map_err(|e| PlanError::Json {
            path: p,
            msg: e.to_string(),
        })?;
        plan.validate()?;
        Ok(plan)
    }

    pub fn to_json_pretty(&self) -> String {
        // Serialising plain maps and vectors cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The layer indices of the plan, ascending.
    pub fn layer_indices(&self) -> Result<Vec<usize>, PlanError> {
        let mut v = self
            .layers
            .keys()
            .map(|k| {
                k.parse::<usize>()
                    .map_err(|_| PlanError::LayerKey(k.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        v.sort_unstable();
        Ok(v)
    }

    /// Rank lists of `layer`.
    pub fn layer(&self, layer: usize) -> Option<&[Vec<u32>]> {
        self.layers.get(&layer.to_string()).map(Vec::as_slice)
    }

    /// Whether `rank` hosts `expert` of `layer`.
    pub fn hosts(&self, layer: usize, rank: usize, expert: u32) -> bool {
        self.layer(layer)
            .and_then(|r| r.get(rank))
            .is_some_and(|e| e.contains(&expert))
    }

    /// Checks the plan on its own: format, rank lists, ids in range, no duplicates on a rank,
    /// every expert hosted, slot limits.
    pub fn validate(&self) -> Result<(), PlanError> {
        if self.format != PLAN_FORMAT {
            return Err(PlanError::Format(self.format.clone()));
        }
        if self.num_ranks == 0 {
            return Err(PlanError::NoRanks);
        }
        for layer in self.layer_indices()? {
            let ranks = self.layer(layer).unwrap_or_default();
            if ranks.len() != self.num_ranks {
                return Err(PlanError::RankCount {
                    layer,
                    got: ranks.len(),
                    want: self.num_ranks,
                });
            }
            let mut hosted = vec![false; self.num_experts];
            for (rank, experts) in ranks.iter().enumerate() {
                if let Some(slots) = self.slots_per_rank {
                    if experts.len() > slots {
                        return Err(PlanError::Slots {
                            layer,
                            rank,
                            count: experts.len(),
                            slots,
                        });
                    }
                }
                let mut seen = vec![false; self.num_experts];
                for &e in experts {
                    let Some(s) = seen.get_mut(e as usize) else {
                        return Err(PlanError::ExpertRange {
                            layer,
                            rank,
                            expert: e,
                            num_experts: self.num_experts,
                        });
                    };
                    if *s {
                        return Err(PlanError::Duplicate {
                            layer,
                            rank,
                            expert: e,
                        });
                    }
                    *s = true;
                    hosted[e as usize] = true;
                }
            }
            if let Some(e) = hosted.iter().position(|h| !h) {
                return Err(PlanError::Unhosted {
                    layer,
                    expert: e as u32,
                });
            }
        }
        Ok(())
    }

    /// Checks that the plan fits a model: same expert count, exactly its MoE layers.
    pub fn check_target(&self, target: &PlanTarget) -> Result<(), PlanError> {
        if self.num_experts != target.num_experts {
            return Err(PlanError::ModelExperts {
                plan: self.num_experts,
                model: target.num_experts,
            });
        }
        let layers = self.layer_indices()?;
        if let Some(&l) = target.moe_layers.iter().find(|l| !layers.contains(l)) {
            return Err(PlanError::MissingLayer { layer: l });
        }
        if let Some(&l) = layers.iter().find(|l| !target.moe_layers.contains(l)) {
            return Err(PlanError::ExtraLayer { layer: l });
        }
        Ok(())
    }

    /// A stable 64-bit fingerprint of the placement (FNV-1a over the canonical JSON), used by
    /// the ranks of a group to check that they all run the same plan.
    pub fn fingerprint(&self) -> u64 {
        let canonical = serde_json::to_string(&(&self.num_ranks, &self.num_experts, &self.layers))
            .unwrap_or_default();
        canonical.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> PlanTarget {
        PlanTarget {
            num_experts: 8,
            moe_layers: vec![0, 2],
        }
    }

    #[test]
    fn contiguous_splits_evenly_and_validates() {
        let p = PlacementPlan::contiguous(&target(), 3).unwrap();
        assert_eq!(
            p.layer(0).unwrap(),
            &[vec![0, 1, 2], vec![3, 4, 5], vec![6, 7]]
        );
        p.check_target(&target()).unwrap();
        let back: PlacementPlan = serde_json::from_str(&p.to_json_pretty()).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.fingerprint(), p.fingerprint());
    }

    #[test]
    fn errors_name_layer_and_rank() {
        let mut p = PlacementPlan::contiguous(&target(), 2).unwrap();
        p.layers.get_mut("2").unwrap()[1].retain(|&e| e != 7);
        assert_eq!(
            p.validate().unwrap_err(),
            PlanError::Unhosted {
                layer: 2,
                expert: 7
            }
        );
        p.layers.get_mut("2").unwrap()[1].push(9);
        assert!(matches!(
            p.validate().unwrap_err(),
            PlanError::ExpertRange {
                layer: 2,
                rank: 1,
                expert: 9,
                ..
            }
        ));
        let mut p = PlacementPlan::contiguous(&target(), 2).unwrap();
        p.layers.get_mut("0").unwrap()[0].push(0);
        assert_eq!(
            p.validate().unwrap_err(),
            PlanError::Duplicate {
                layer: 0,
                rank: 0,
                expert: 0
            }
        );
        let mut p = PlacementPlan::contiguous(&target(), 2).unwrap();
        p.slots_per_rank = Some(3);
        assert!(matches!(
            p.validate().unwrap_err(),
            PlanError::Slots {
                rank: 0,
                count: 4,
                ..
            }
        ));
    }

    #[test]
    fn model_mismatch_is_refused() {
        let p = PlacementPlan::contiguous(&target(), 2).unwrap();
        let other = PlanTarget {
            num_experts: 8,
            moe_layers: vec![0, 1, 2],
        };
        assert_eq!(
            p.check_target(&other).unwrap_err(),
            PlanError::MissingLayer { layer: 1 }
        );
        let other = PlanTarget {
            num_experts: 16,
            moe_layers: vec![0, 2],
        };
        assert!(matches!(
            p.check_target(&other).unwrap_err(),
            PlanError::ModelExperts { .. }
        ));
        let mut p2 = p.clone();
        p2.format = "other/v9".into();
        assert!(matches!(p2.validate().unwrap_err(), PlanError::Format(_)));
    }
}
