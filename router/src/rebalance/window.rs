//! Per-(layer, expert) token counts of a group, read from its ranks' `EpStats`.

use std::collections::BTreeMap;

use moeflow_trace::{CountsTrace, ModelShape, TraceItem};
use serde_json::Value;

use crate::group::{GroupError, WorkerGroup};

/// Layer → tokens computed per expert (summed over the ranks that host it).
pub type ExpertLoads = BTreeMap<usize, Vec<u64>>;

/// The group's counts since its workers started. Fails if a rank does not answer (a window
/// missing a rank would look like a skew that is not there).
pub async fn read_counts(group: &WorkerGroup) -> Result<ExpertLoads, GroupError> {
    let mut out = ExpertLoads::new();
    for st in group.status().await {
        let st = st?;
        let Ok(v) = serde_json::from_str::<Value>(&st.ep_stats_json) else {
            continue;
        };
        add_rank(&mut out, &v);
    }
    Ok(out)
}

fn add_rank(out: &mut ExpertLoads, stats: &Value) {
    let Some(layers) = stats.get("layers").and_then(Value::as_object) else {
        return;
    };
    for (layer, l) in layers {
        let (Ok(layer), Some(counts)) = (
            layer.parse::<usize>(),
            l.get("tokens_per_expert").and_then(Value::as_array),
        ) else {
            continue;
        };
        let entry = out.entry(layer).or_insert_with(|| vec![0; counts.len()]);
        if entry.len() < counts.len() {
            entry.resize(counts.len(), 0);
        }
        for (e, c) in counts.iter().enumerate() {
            entry[e] += c.as_u64().unwrap_or(0);
        }
    }
}

/// `now - prev` per (layer, expert); counters that went down (a restarted rank) count from 0.
pub fn difference(now: &ExpertLoads, prev: &ExpertLoads) -> ExpertLoads {
    now.iter()
        .map(|(l, v)| {
            let p = prev.get(l);
            let d = v
                .iter()
                .enumerate()
                .map(|(e, &c)| {
                    let before = p.and_then(|p| p.get(e)).copied().unwrap_or(0);
                    if c >= before {
                        c - before
                    } else {
                        c
                    }
                })
                .collect();
            (*l, d)
        })
        .collect()
}

/// The window in the trace model, as one unphased [`CountsTrace`] over `shape`'s layers, so
/// that the planners and the evaluator read it like any recorded count dump. Not checked here:
/// consumers validate it against `shape` (a layer or width the model lacks is named there).
pub fn to_trace(window: &ExpertLoads, shape: &ModelShape) -> TraceItem {
    let len = window
        .keys()
        .next_back()
        .map_or(0, |&l| l + 1)
        .max(shape.num_layers);
    let mut counts = vec![None; len];
    for (&layer, c) in window {
        counts[layer] = Some(c.clone());
    }
    TraceItem::Counts(CountsTrace {
        id: "rebalance window".into(),
        workload: None,
        phase: None,
        counts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_ranks_and_takes_windows() {
        let mut loads = ExpertLoads::new();
        add_rank(
            &mut loads,
            &serde_json::json!({"layers": {"3": {"tokens_per_expert": [5, 0, 0]}}}),
        );
        add_rank(
            &mut loads,
            &serde_json::json!({"layers": {"3": {"tokens_per_expert": [0, 2, 7]}}}),
        );
        assert_eq!(loads[&3], vec![5, 2, 7]);
        let later: ExpertLoads = [(3, vec![9, 2, 8])].into_iter().collect();
        assert_eq!(difference(&later, &loads)[&3], vec![4, 0, 1]);
        let restarted: ExpertLoads = [(3, vec![1, 0, 0])].into_iter().collect();
        assert_eq!(difference(&restarted, &loads)[&3], vec![1, 0, 0]);
    }
}
