//! The modelled gain of a re-placement: the placement crate's evaluator replays the window's
//! counts against both plans, so the rebalancer judges plans exactly as `moeflow place eval`
//! does (a replicated expert's selections split evenly between its copies).

use moeflow_placement::eval::{DeviceProfile, EvalError, EvalOptions, Evaluator};
use moeflow_placement::PlacementPlan;
use moeflow_trace::{ModelShape, TraceItem};

/// Sum over MoE layers of the busiest rank's load (selections) when `window` runs on `plan`:
/// a MoE layer's step waits for its busiest rank.
pub fn busiest_load(
    plan: &PlacementPlan,
    shape: &ModelShape,
    window: &TraceItem,
) -> Result<f64, EvalError> {
    let mut ev = Evaluator::new(plan, shape, DeviceProfile::h100(), EvalOptions::default())?;
    ev.add(window)?;
    Ok(ev
        .finish()
        .layers
        .iter()
        .map(|l| l.rank_load.iter().copied().fold(0.0, f64::max))
        .sum())
}

/// `busiest_load(old) / busiest_load(new) - 1`: 0.25 means the new plan's modelled steps are
/// 25% faster. 0 for an empty window.
pub fn modelled_gain(
    old: &PlacementPlan,
    new: &PlacementPlan,
    shape: &ModelShape,
    window: &TraceItem,
) -> Result<f64, EvalError> {
    let (o, n) = (
        busiest_load(old, shape, window)?,
        busiest_load(new, shape, window)?,
    );
    Ok(if n > 0.0 { o / n - 1.0 } else { 0.0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use moeflow_placement::PlanTarget;
    use moeflow_trace::CountsTrace;

    #[test]
    fn busiest_rank_with_replicas_split() {
        let t = PlanTarget {
            num_experts: 4,
            moe_layers: vec![1],
        };
        let shape = ModelShape {
            model: None,
            num_layers: 2,
            num_experts: 4,
            top_k: 1,
            moe_layers: vec![1],
        };
        let window = TraceItem::Counts(CountsTrace {
            id: "w".into(),
            workload: None,
            phase: None,
            counts: vec![None, Some(vec![8, 0, 2, 2])],
        });
        let c = PlacementPlan::contiguous(&t, 2).unwrap();
        assert_eq!(busiest_load(&c, &shape, &window).unwrap(), 8.0);
        let mut p = c.clone();
        p.slots_per_rank = None;
        p.layers.insert("1".into(), vec![vec![0, 1], vec![0, 2, 3]]);
        // Expert 0 is split 4/4: rank 1 has 4 + 2 + 2.
        assert_eq!(busiest_load(&p, &shape, &window).unwrap(), 8.0);
        p.layers.insert("1".into(), vec![vec![0, 1, 2], vec![0, 3]]);
        assert_eq!(busiest_load(&p, &shape, &window).unwrap(), 6.0);
        let g = modelled_gain(&c, &p, &shape, &window).unwrap();
        assert!((g - (8.0 / 6.0 - 1.0)).abs() < 1e-12);
    }
}
