//! Publishes the workers' data-movement counters through the router's metrics.
//!
//! Each rank counts, per MoE layer, the tokens its experts computed and the activation bytes it
//! exchanged (`EpStats`, reported as JSON by the `Status` RPC). The router is the one endpoint
//! users scrape, so it polls the ranks and republishes: expert load per layer and rank,
//! all-to-all bytes, and balancedness (mean rank load over the busiest rank's load).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::group::WorkerGroup;

/// Per layer: each rank's computed tokens and (sent, received) remote bytes.
type LayerLoads = BTreeMap<String, Vec<(u64, u64, u64)>>;

fn sum(v: &Value) -> u64 {
    v.as_array()
        .map_or(0, |a| a.iter().filter_map(Value::as_u64).sum())
}

fn sum_remote(v: &Value, rank: usize) -> u64 {
    v.as_array().map_or(0, |a| {
        a.iter()
            .enumerate()
            .filter(|(r, _)| *r != rank)
            .filter_map(|(_, b)| b.as_u64())
            .sum()
    })
}

/// Publishes one rank's MoE timing of one layer: steps run, seconds of expert compute and of
/// the whole routed part (what placement changes; the busiest rank's compute sets the pace).
fn publish_timing(name: &str, layer: &str, rank: usize, l: &Value) {
    let labels = [
        ("group", name.to_string()),
        ("layer", layer.to_string()),
        ("rank", rank.to_string()),
    ];
    let f = |k: &str| l.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    metrics::gauge!("moeflow:moe_layer_steps", &labels).set(f("calls"));
    metrics::gauge!("moeflow:expert_compute_seconds", &labels).set(f("compute_seconds"));
    metrics::gauge!("moeflow:moe_routed_seconds", &labels).set(f("routed_seconds"));
}

/// Reads the ranks' counters once and sets the gauges. Ranks that do not answer are skipped.
pub async fn publish_group_stats(name: &str, group: &WorkerGroup) {
    let n = group.world_size();
    let mut layers: LayerLoads = BTreeMap::new();
    for (rank, st) in group.status().await.into_iter().enumerate() {
        let Ok(st) = st else { continue };
        let Ok(v) = serde_json::from_str::<Value>(&st.ep_stats_json) else {
            continue;
        };
        let Some(ls) = v.get("layers").and_then(Value::as_object) else {
            continue;
        };
        for (layer, l) in ls {
            publish_timing(name, layer, rank, l);
            let entry = layers
                .entry(layer.clone())
                .or_insert_with(|| vec![(0, 0, 0); n]);
            if let Some(e) = entry.get_mut(rank) {
                *e = (
                    sum(&l["tokens_per_expert"]),
                    sum_remote(&l["bytes_sent"], rank),
                    sum_remote(&l["bytes_received"], rank),
                );
            }
        }
    }
    for (layer, ranks) in &layers {
        for (rank, (tokens, sent, recv)) in ranks.iter().enumerate() {
            let labels = [
                ("group", name.to_string()),
                ("layer", layer.clone()),
                ("rank", rank.to_string()),
            ];
            metrics::gauge!("moeflow:expert_load_tokens", &labels).set(*tokens as f64);
            let mut s = labels.to_vec();
            s.push(("direction", "sent".into()));
            metrics::gauge!("moeflow:all_to_all_bytes", &s).set(*sent as f64);
            let mut r = labels.to_vec();
            r.push(("direction", "received".into()));
            metrics::gauge!("moeflow:all_to_all_bytes", &r).set(*recv as f64);
        }
        if let Some(b) = balancedness(&ranks.iter().map(|r| r.0).collect::<Vec<_>>()) {
            metrics::gauge!("moeflow:expert_balancedness", "group" => name.to_string(), "layer" => layer.clone()).set(b);
        }
    }
}

/// Mean rank load over the busiest rank's load (1 is perfect balance); `None` without load.
pub fn balancedness(loads: &[u64]) -> Option<f64> {
    let max = *loads.iter().max()?;
    if max == 0 {
        return None;
    }
    let mean = loads.iter().sum::<u64>() as f64 / loads.len() as f64;
    Some(mean / max as f64)
}

/// Polls `groups` every `every` until the returned task is aborted.
pub fn spawn_stats_poller(
    groups: Vec<(String, WorkerGroup)>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            for (name, g) in &groups {
                publish_group_stats(name, g).await;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balancedness_is_mean_over_max() {
        assert_eq!(balancedness(&[10, 10]), Some(1.0));
        assert_eq!(balancedness(&[30, 10]), Some(20.0 / 30.0));
        assert_eq!(balancedness(&[0, 0]), None);
        assert_eq!(balancedness(&[]), None);
    }

    #[test]
    fn remote_sums_skip_own_rank() {
        let v: Value = serde_json::json!([5, 7, 11]);
        assert_eq!(sum_remote(&v, 1), 16);
        assert_eq!(sum(&v), 23);
    }
}
