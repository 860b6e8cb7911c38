//! Folding one model's expert counts onto another model's shape, so that a small model can be
//! driven (route replay) or planned for with the load skew a real, large one recorded.
//!
//! Rules, for a source with `S` MoE layers of `Es` experts and a target with `M` MoE layers of
//! `E` experts:
//! - The source's MoE layers are its layers with any count (DeepSeek-V3's three dense layers
//!   are all zero in SGLang's dumps); the target's are its shape's `moe_layers`.
//! - Target MoE layer number `i` takes source MoE layer number `i * S / M` (layers are
//!   repeated when the target has more, sampled evenly when it has fewer).
//! - Target expert `e` takes the summed counts of the contiguous block of source experts
//!   `e * Es / E .. (e + 1) * Es / E`, so the total per layer is kept. A source with fewer
//!   experts than the target is refused: experts can be folded, not invented.

use crate::model::{CountsTrace, ModelShape, TraceModelError};

/// Why counts cannot be folded onto a target shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FoldError {
    #[error("the counts do not fit their source shape: {0}")]
    Source(#[from] TraceModelError),
    #[error("the source has no MoE layer with any count")]
    Empty,
    #[error("the target model has no MoE layers")]
    NoTargetLayers,
    #[error("the source has {source_experts} experts per layer, fewer than the target's {target} (experts can be folded, not invented)")]
    TooFewExperts {
        source_experts: usize,
        target: usize,
    },
}

/// `counts` (of a model shaped `source`) folded onto `target` by the rules of this module.
/// The result has `target.num_layers` layers, counts at exactly the target's MoE layers, and
/// keeps the item's id, workload and phase.
pub fn fold_counts(
    counts: &CountsTrace,
    source: &ModelShape,
    target: &ModelShape,
) -> Result<CountsTrace, FoldError> {
    crate::model::TraceItem::Counts(counts.clone()).validate(source)?;
    if target.moe_layers.is_empty() {
        return Err(FoldError::NoTargetLayers);
    }
    let rows: Vec<&Vec<u64>> = counts
        .counts
        .iter()
        .flatten()
        .filter(|c| c.iter().any(|&v| v > 0))
        .collect();
    if rows.is_empty() {
        return Err(FoldError::Empty);
    }
    let (es, e) = (source.num_experts, target.num_experts);
    if es < e {
        return Err(FoldError::TooFewExperts {
            source_experts: es,
            target: e,
        });
    }
    let m = target.moe_layers.len();
    let mut out = vec![None; target.num_layers];
    for (i, &layer) in target.moe_layers.iter().enumerate() {
        let src = rows[i * rows.len() / m];
        let folded = (0..e)
            .map(|x| src[x * es / e..(x + 1) * es / e].iter().sum())
            .collect();
        if let Some(slot) = out.get_mut(layer) {
            *slot = Some(folded);
        }
    }
    Ok(CountsTrace {
        id: counts.id.clone(),
        workload: counts.workload.clone(),
        phase: counts.phase,
        counts: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn shape(num_layers: usize, num_experts: usize, moe_layers: Vec<usize>) -> ModelShape {
        ModelShape {
            model: None,
            num_layers,
            num_experts,
            top_k: 2,
            moe_layers,
        }
    }

    /// A dense layer, then two MoE layers of 8 experts.
    fn source() -> (CountsTrace, ModelShape) {
        let c = CountsTrace {
            id: "s".into(),
            workload: Some("w".into()),
            phase: None,
            counts: vec![
                None,
                Some(vec![100, 100, 1, 1, 1, 1, 1, 1]),
                Some(vec![1, 1, 1, 1, 1, 1, 50, 50]),
            ],
        };
        (c, shape(3, 8, vec![1, 2]))
    }

    #[test]
    fn folds_layers_and_expert_blocks() {
        let (c, s) = source();
        let t = shape(5, 4, vec![1, 2, 3, 4]);
        let f = fold_counts(&c, &s, &t).unwrap();
        // Four target layers over two source layers: 1,2 take layer 1; 3,4 take layer 2.
        assert_eq!(f.counts[0], None);
        assert_eq!(f.counts[1], Some(vec![200, 2, 2, 2]));
        assert_eq!(f.counts[2], Some(vec![200, 2, 2, 2]));
        assert_eq!(f.counts[4], Some(vec![2, 2, 2, 100]));
        assert_eq!(f.workload.as_deref(), Some("w"));
        // Fewer target layers: sampled evenly.
        let f = fold_counts(&c, &s, &shape(1, 8, vec![0])).unwrap();
        assert_eq!(f.counts, vec![Some(vec![100, 100, 1, 1, 1, 1, 1, 1])]);
    }

    #[test]
    fn bad_folds_are_named() {
        let (c, s) = source();
        let err = fold_counts(&c, &s, &shape(2, 16, vec![0])).unwrap_err();
        assert_eq!(
            err,
            FoldError::TooFewExperts {
                source_experts: 8,
                target: 16
            }
        );
        assert!(err.to_string().contains("fewer than the target's 16"));
        let zero = CountsTrace {
            counts: vec![None, Some(vec![0; 8]), None],
            ..c.clone()
        };
        assert_eq!(
            fold_counts(&zero, &s, &shape(1, 4, vec![0])),
            Err(FoldError::Empty)
        );
        assert_eq!(
            fold_counts(&c, &s, &shape(1, 4, vec![])),
            Err(FoldError::NoTargetLayers)
        );
        let wrong = shape(3, 6, vec![1, 2]);
        assert!(matches!(
            fold_counts(&c, &wrong, &shape(1, 4, vec![0])),
            Err(FoldError::Source(TraceModelError::CountsWidth { .. }))
        ));
    }

    proptest! {
        /// Every target MoE layer gets a whole source layer's total, and nothing else.
        #[test]
        fn keeps_each_layer_total(
            rows in proptest::collection::vec(proptest::collection::vec(0u64..1000, 12), 1..6),
            target_layers in 1usize..9,
            target_experts in prop::sample::select(vec![1usize, 2, 3, 4, 5, 12]),
        ) {
            prop_assume!(rows.iter().any(|r| r.iter().any(|&v| v > 0)));
            let s = shape(rows.len(), 12, (0..rows.len()).collect());
            let c = CountsTrace { id: "p".into(), workload: None, phase: None, counts: rows.iter().cloned().map(Some).collect() };
            let t = shape(target_layers + 1, target_experts, (1..=target_layers).collect());
            let f = fold_counts(&c, &s, &t).unwrap();
            let totals: Vec<u64> = rows.iter().map(|r| r.iter().sum()).filter(|&t| t > 0).collect();
            prop_assert_eq!(f.counts[0].clone(), None);
            for l in 1..=target_layers {
                let got: u64 = f.counts[l].as_ref().unwrap().iter().sum();
                prop_assert!(totals.contains(&got));
                prop_assert_eq!(f.counts[l].as_ref().unwrap().len(), target_experts);
            }
        }
    }
}
