//! The evaluation's plot: busiest rank over mean per MoE layer, one line per plan.

use std::path::Path;

use moeflow_trace::analysis::{line_plot, AnalysisError};

use super::Comparison;

/// Draws busiest/mean per layer for every plan of `c` into `path` (SVG).
pub fn busiest_over_mean(c: &Comparison, path: &Path) -> Result<(), AnalysisError> {
    let series: Vec<(String, Vec<(f64, f64)>)> = c
        .runs
        .iter()
        .map(|(name, r)| {
            let points = r
                .layers
                .iter()
                .filter_map(|l| l.busiest_over_mean.map(|v| (l.layer as f64, v)))
                .collect();
            (name.clone(), points)
        })
        .collect();
    line_plot(
        path,
        "Busiest rank over mean, per MoE layer",
        "layer",
        "busiest / mean",
        &series,
        Some(1.0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::{compare, DeviceProfile, EvalOptions};
    use crate::planner::testutil::input;
    use moeflow_trace::{CountsTrace, ModelShape, TraceItem};

    #[test]
    fn draws_one_line_per_plan() {
        let load = vec![40.0, 30.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
        let pin = input(vec![load.clone()], 2, 0);
        let shape = ModelShape {
            model: None,
            num_layers: pin.target.moe_layers[0] + 1,
            num_experts: 8,
            top_k: 2,
            moe_layers: pin.target.moe_layers.clone(),
        };
        let mut counts = vec![None; shape.num_layers];
        counts[shape.moe_layers[0]] = Some(load.iter().map(|&x| x as u64).collect());
        let item = TraceItem::Counts(CountsTrace {
            id: "c".into(),
            workload: None,
            phase: None,
            counts,
        });
        let c = compare(
            &["contiguous", "eplb"],
            &pin,
            &shape,
            &DeviceProfile::h100(),
            &EvalOptions::default(),
            [&item],
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.svg");
        busiest_over_mean(&c, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("contiguous") && svg.contains("eplb"));
    }
}
