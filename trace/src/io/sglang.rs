//! SGLang's expert-distribution dumps (`{"logical_count": [[count per expert] per layer]}`):
//! cumulative counts of a whole run, so they become [`CountsTrace`] items that support only
//! the frequency statistics.

use std::path::Path;

use serde::Deserialize;

use super::evidence::{Layers, ShapeEvidence};
use super::FormatError;
use crate::model::{CountsTrace, Phase};

#[derive(Deserialize)]
struct Dump {
    logical_count: Vec<Vec<f64>>,
}

/// Whether a file's first bytes look like a dump (an object whose first key is
/// `logical_count`).
pub fn sniff(prefix: &[u8]) -> bool {
    let t = prefix.trim_ascii_start();
    t.starts_with(b"{") && t[1..].trim_ascii_start().starts_with(b"\"logical_count\"")
}

/// Phase and workload label from a file stem: `prefill_in1000out1000` is the prefill side of
/// workload `in1000out1000`; a stem without the prefix has no phase.
pub fn labels_from_stem(stem: &str) -> (Option<Phase>, String) {
    for (prefix, phase) in [("prefill_", Phase::Prefill), ("decode_", Phase::Decode)] {
        if let Some(rest) = stem.strip_prefix(prefix) {
            return (Some(phase), rest.to_string());
        }
    }
    (None, stem.to_string())
}

/// Parses one dump. Counts must be non-negative whole numbers (SGLang writes them as floats);
/// all-zero layers are dense and become `None`.
pub fn parse(
    bytes: &[u8],
    id: String,
    workload: Option<String>,
    phase: Option<Phase>,
) -> Result<CountsTrace, FormatError> {
    let dump: Dump = serde_json::from_slice(bytes).map_err(|e| FormatError::Syntax {
        offset: e.column(),
        message: format!("line {}: {e}", e.line()),
    })?;
    let width = dump.logical_count.first().map_or(0, Vec::len);
    if width == 0 {
        return Err(FormatError::Layout(
            "logical_count: no layers or no experts".into(),
        ));
    }
    let mut counts = Vec::with_capacity(dump.logical_count.len());
    for (layer, row) in dump.logical_count.iter().enumerate() {
        if row.len() != width {
            return Err(FormatError::Layout(format!(
                "logical_count layer {layer}: {} experts, layer 0 has {width}",
                row.len()
            )));
        }
        let mut out = Vec::with_capacity(width);
        for (e, &c) in row.iter().enumerate() {
            if !(c.is_finite() && c >= 0.0 && c.fract() == 0.0 && c < 9.007e15) {
                return Err(FormatError::Layout(format!(
                    "logical_count layer {layer} expert {e}: {c} is not a count"
                )));
            }
            out.push(c as u64);
        }
        counts.push(out.iter().any(|&c| c > 0).then_some(out));
    }
    Ok(CountsTrace {
        id,
        workload,
        phase,
        counts,
    })
}

/// The shape facts of one dump: every layer, which of them route tokens, and the width of
/// the lists (the expert count); a dump never says how many experts a token selects.
pub fn shape_evidence(bytes: &[u8], path: &Path, id: String) -> Result<ShapeEvidence, FormatError> {
    let c = parse(bytes, id, None, None)?;
    Ok(ShapeEvidence {
        path: path.to_path_buf(),
        model: None,
        num_layers: Layers::Stated(c.counts.len()),
        moe_layers: (0..c.counts.len())
            .filter(|&l| c.counts[l].is_some())
            .collect(),
        num_experts: c.counts.iter().flatten().map(Vec::len).next(),
        top_k: None,
        ids: None,
    })
}

/// Renders counts in SGLang's layout, `num_layers` rows of `num_experts` counts; layers
/// without counts (dense) are all-zero rows, as SGLang writes them.
pub fn render(c: &CountsTrace, num_layers: usize, num_experts: usize) -> String {
    let rows: Vec<Vec<u64>> = (0..num_layers)
        .map(|l| match c.counts.get(l) {
            Some(Some(v)) => v.clone(),
            _ => vec![0; num_experts],
        })
        .collect();
    serde_json::json!({ "logical_count": rows }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_round_trips() {
        let c = CountsTrace {
            id: "x".into(),
            workload: None,
            phase: None,
            counts: vec![None, Some(vec![3, 1])],
        };
        let text = render(&c, 2, 2);
        assert_eq!(parse(text.as_bytes(), "x".into(), None, None).unwrap(), c);
    }

    #[test]
    fn parses_counts_and_marks_dense_layers() {
        let b = br#" { "logical_count": [[0.0, 0.0], [3.0, 1.0]] }"#;
        assert!(sniff(b));
        let c = parse(b, "x".into(), None, None).unwrap();
        assert_eq!(c.counts, vec![None, Some(vec![3, 1])]);
        assert!(parse(
            br#"{"logical_count": [[1.5, 0.0]]}"#,
            "x".into(),
            None,
            None
        )
        .is_err());
        assert!(parse(
            br#"{"logical_count": [[1.0], [1.0, 2.0]]}"#,
            "x".into(),
            None,
            None
        )
        .is_err());
        assert_eq!(
            labels_from_stem("decode_in2000out100"),
            (Some(Phase::Decode), "in2000out100".into())
        );
    }
}
