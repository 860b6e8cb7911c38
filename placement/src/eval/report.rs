//! What an evaluation reports, per layer and overall, and its text table.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

/// Results of one MoE layer. Fields that need per-token data are `None` for aggregate
/// sources ("not available", never zero).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerReport {
    pub layer: usize,
    /// (token, expert) selections each rank computed.
    pub rank_load: Vec<f64>,
    /// Busiest rank's load over the mean (1 is perfect balance); `None` for an empty layer.
    pub busiest_over_mean: Option<f64>,
    /// Busiest over least-loaded rank; `None` when some rank got nothing.
    pub busiest_over_least: Option<f64>,
    /// Modelled MoE time of one step: max over ranks of the roofline time of its experts'
    /// tokens plus the link time of its all-to-all bytes (seconds).
    pub step_time_s: f64,
    /// The compute part alone (max over ranks of the roofline time).
    pub compute_time_s: f64,
    /// Tokens replayed at this layer (per-token sources only).
    pub tokens: Option<u64>,
    /// All-to-all bytes (dispatch + combine) per token.
    pub bytes_per_token: Option<f64>,
    /// The part of them that crosses nodes, per token.
    pub cross_node_bytes_per_token: Option<f64>,
    /// Distinct ranks that compute a token's experts (its own included), mean per token.
    pub ranks_per_token: Option<f64>,
    /// Distinct ranks other than the token's own, mean per token.
    pub remote_ranks_per_token: Option<f64>,
}

/// Means over layers (layers without load are left out).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OverallReport {
    pub busiest_over_mean: Option<f64>,
    /// Mean over the layers where every rank got load.
    pub busiest_over_least: Option<f64>,
    /// Sum over layers: the modelled MoE time of one step through the whole model.
    pub step_time_s: f64,
    pub compute_time_s: f64,
    pub bytes_per_token_per_layer: Option<f64>,
    pub cross_node_bytes_per_token_per_layer: Option<f64>,
    pub ranks_per_token: Option<f64>,
    pub remote_ranks_per_token: Option<f64>,
}

/// A plan replayed against a trace source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub algorithm: Option<String>,
    pub plan_source: Option<String>,
    pub num_ranks: usize,
    pub ranks_per_node: Option<usize>,
    pub profile: String,
    /// Tokens per step the modelled times assume, for the whole group.
    pub tokens_per_step: f64,
    /// Items replayed; whether any were per-token or aggregate.
    pub items: u64,
    pub per_token: bool,
    pub aggregate: bool,
    pub layers: Vec<LayerReport>,
    pub overall: OverallReport,
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "n/a".to_string(), |x| format!("{x:.prec$}"))
}

impl EvalReport {
    /// A fixed-width table: one row per layer and an `all` row.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "plan {} ({} ranks{}), profile {}, {} tokens/step, {} items{}",
            self.algorithm.as_deref().unwrap_or("?"),
            self.num_ranks,
            self.ranks_per_node
                .map_or(String::new(), |r| format!(", {r} per node")),
            self.profile,
            self.tokens_per_step,
            self.items,
            if self.per_token {
                ""
            } else {
                " (aggregate: no per-token data)"
            },
        );
        let _ = writeln!(
            s,
            "{:>6} {:>10} {:>10} {:>12} {:>12} {:>12} {:>12} {:>8}",
            "layer",
            "max/mean",
            "max/min",
            "step us",
            "compute us",
            "B/token",
            "xnode B/tok",
            "ranks/t"
        );
        let row = |s: &mut String, name: &str, bm, bl, t: f64, c: f64, b, x, r| {
            let _ = writeln!(
                s,
                "{:>6} {:>10} {:>10} {:>12.1} {:>12.1} {:>12} {:>12} {:>8}",
                name,
                opt(bm, 3),
                opt(bl, 3),
                t * 1e6,
                c * 1e6,
                opt(b, 0),
                opt(x, 0),
                opt(r, 2)
            );
        };
        for l in &self.layers {
            row(
                &mut s,
                &l.layer.to_string(),
                l.busiest_over_mean,
                l.busiest_over_least,
                l.step_time_s,
                l.compute_time_s,
                l.bytes_per_token,
                l.cross_node_bytes_per_token,
                l.ranks_per_token,
            );
        }
        let o = &self.overall;
        row(
            &mut s,
            "all",
            o.busiest_over_mean,
            o.busiest_over_least,
            o.step_time_s,
            o.compute_time_s,
            o.bytes_per_token_per_layer,
            o.cross_node_bytes_per_token_per_layer,
            o.ranks_per_token,
        );
        s
    }
}

/// Several plans replayed against the same source, side by side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// (planner name, its report), in the order asked.
    pub runs: Vec<(String, EvalReport)>,
}

impl Comparison {
    /// One row per planner with the overall numbers.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<22} {:>10} {:>10} {:>12} {:>12} {:>12} {:>12} {:>8}",
            "planner",
            "max/mean",
            "max/min",
            "step us",
            "compute us",
            "B/tok/layer",
            "xnode B",
            "ranks/t"
        );
        for (name, r) in &self.runs {
            let o = &r.overall;
            let _ = writeln!(
                s,
                "{:<22} {:>10} {:>10} {:>12.1} {:>12.1} {:>12} {:>12} {:>8}",
                name,
                opt(o.busiest_over_mean, 3),
                opt(o.busiest_over_least, 3),
                o.step_time_s * 1e6,
                o.compute_time_s * 1e6,
                opt(o.bytes_per_token_per_layer, 0),
                opt(o.cross_node_bytes_per_token_per_layer, 0),
                opt(o.ranks_per_token, 2)
            );
        }
        s
    }
}
