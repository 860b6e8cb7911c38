//! The Markdown report: a headline table against the paper's numbers, then one section per
//! statistic family. Missing statistics print as "n/a".

use std::fmt::Write;

use super::frequency::PhaseFrequencies;
use super::report::AnalysisReport;
use super::stats::mean_some;
use super::transition::TransitionReport;
use super::workload::WorkloadProfile;

fn f(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |x| format!("{x:.3}"))
}

fn times(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |x| format!("{x:.2}x"))
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |x| format!("{:.1}%", 100.0 * x))
}

fn phase_name(p: Option<crate::Phase>) -> &'static str {
    p.map_or("unphased", |p| p.as_str())
}

fn profile_name(p: &WorkloadProfile) -> String {
    format!(
        "{} / {}",
        p.workload.as_deref().unwrap_or("(unlabelled)"),
        phase_name(p.phase)
    )
}

/// Renders the report; `plots` are file names (relative to the report) to link.
pub fn render_markdown(r: &AnalysisReport, plots: &[String]) -> String {
    let mut s = String::new();
    let sh = &r.shape;
    let _ = writeln!(s, "# Expert-selection trace analysis\n");
    let _ = writeln!(
        s,
        "Model: {} — {} layers, {} MoE layers, {} routed experts, top-{}.\n",
        sh.model.as_deref().unwrap_or("(unnamed)"),
        sh.num_layers,
        sh.moe_layers.len(),
        sh.num_experts,
        sh.top_k
    );
    let i = &r.inputs;
    let _ = writeln!(
        s,
        "Inputs: {} per-token requests ({} prefill tokens, {} decode tokens), {} aggregate-count items; workloads: {}.\n",
        i.requests,
        i.prefill_tokens,
        i.decode_tokens,
        i.counts_items,
        if i.workloads.is_empty() { "none labelled".to_string() } else { i.workloads.join(", ") }
    );
    if !r.notes.is_empty() {
        let _ = writeln!(s, "## Notes\n");
        for n in &r.notes {
            let _ = writeln!(s, "- {n}");
        }
        s.push('\n');
    }
    headline(&mut s, r);
    frequencies(&mut s, r);
    transitions(
        &mut s,
        "Layer level",
        "layer l → layer l+1",
        &r.layer_transitions.all,
    );
    transitions(
        &mut s,
        "Token level",
        "decode token t → t+1, same layer",
        &r.token_transitions,
    );
    prefill_decode(&mut s, r);
    coactivation(&mut s, r);
    workloads(&mut s, r);
    if !plots.is_empty() {
        let _ = writeln!(s, "## Plots\n");
        for p in plots {
            let _ = writeln!(s, "![{p}]({p})\n");
        }
    }
    s
}

fn headline(s: &mut String, r: &AnalysisReport) {
    let _ = writeln!(s, "## Summary\n");
    let _ = writeln!(s, "| statistic | this trace | paper |\n|---|---|---|");
    for (name, fr) in [
        ("prefill", &r.frequencies.prefill),
        ("decode", &r.frequencies.decode),
    ] {
        let sm = fr.as_ref().map(|f| &f.summary);
        let _ = writeln!(
            s,
            "| hottest expert / mean, {name} (mean over layers; worst layer) | {} ({} at layer {}) | up to 16x |",
            f(sm.and_then(|x| x.mean_max_over_mean)),
            f(sm.and_then(|x| x.worst_max_over_mean)),
            sm.and_then(|x| x.worst_layer).map_or("n/a".into(), |l| l.to_string()),
        );
    }
    let lt = r.layer_transitions.all.as_ref();
    let _ = writeln!(
        s,
        "| layer level: top-{:.0}% candidates cover (independent baseline) | {} ({}) | 50-77% |",
        100.0 * r.config.top_fraction,
        pct(lt.and_then(|t| t.coverage)),
        pct(lt.and_then(|t| t.independent_coverage)),
    );
    let tt = r.token_transitions.as_ref();
    let _ = writeln!(
        s,
        "| token level: top-{:.0}% candidates cover (independent baseline) | {} ({}) | 47-80% |",
        100.0 * r.config.top_fraction,
        pct(tt.and_then(|t| t.coverage)),
        pct(tt.and_then(|t| t.independent_coverage)),
    );
    let pd = &r.prefill_vs_decode;
    // Same workload in both phases where labels allow (the paper's comparison), else pooled.
    let compared: Vec<&super::compare::PhaseComparison> = if pd.workloads.is_empty() {
        pd.overall.iter().collect()
    } else {
        pd.workloads.iter().collect()
    };
    let scope = if pd.workloads.is_empty() {
        "all data pooled"
    } else {
        "mean over workloads"
    };
    let _ = writeln!(
        s,
        "| prefill vs decode Spearman, mean over layers (share of layers ≥ 0.7); {scope} | {} ({}) | mostly ≥ 0.7 |",
        f(mean_some(compared.iter().map(|c| c.mean_spearman))),
        pct(mean_some(compared.iter().map(|c| c.share_spearman_ge_0_7))),
    );
    let _ = writeln!(
        s,
        "| prefill vs decode Pearson, mean over layers; {scope} | {} | |",
        f(mean_some(compared.iter().map(|c| c.mean_pearson))),
    );
    if !compared.is_empty() {
        let covs: Vec<String> = r
            .config
            .coverage_top_ns
            .iter()
            .enumerate()
            .map(|(k, n)| {
                let share = mean_some(
                    compared
                        .iter()
                        .map(|c| c.mean_coverage.get(k).and_then(|t| t.share)),
                );
                format!("top-{n}: {}", pct(share))
            })
            .collect();
        let _ = writeln!(
            s,
            "| top decode experts among top prefill experts; {scope} | {} | 60/75/90% |",
            covs.join(", ")
        );
    }
    let co = r.coactivation.all.as_ref();
    let _ = writeln!(
        s,
        "| co-activation: top-{:.0}% pairs' share of co-activations | {} | 60-80% |",
        100.0 * r.config.top_pair_fraction,
        pct(co.and_then(|c| c.mean_top_share)),
    );
    let _ = writeln!(
        s,
        "| co-activation: top pairs over the random rate (max; mean) | {}; {} | 20-40x |\n",
        times(co.and_then(|c| c.mean_top_ratio_max)),
        times(co.and_then(|c| c.mean_top_ratio_mean)),
    );
}

fn phase_table(s: &mut String, p: &PhaseFrequencies) {
    let _ = writeln!(
        s,
        "### {} ({})\n",
        phase_name(p.phase),
        match (p.per_token, p.aggregate) {
            (true, true) => "per-token and aggregate data",
            (true, false) => "per-token data",
            _ => "aggregate counts",
        }
    );
    let sm = &p.summary;
    let _ = writeln!(
        s,
        "Mean over {} layers: max/mean {}, Gini {}, hot experts {}; worst layer {} at {}.\n",
        sm.layers,
        f(sm.mean_max_over_mean),
        f(sm.mean_gini),
        f(sm.mean_hot_experts),
        sm.worst_layer.map_or("n/a".into(), |l| l.to_string()),
        f(sm.worst_max_over_mean),
    );
    let _ = writeln!(
        s,
        "| layer | selections | max/mean | Gini | hot | top experts |\n|---|---|---|---|---|---|"
    );
    for l in &p.layers {
        let top: Vec<String> = l.top.iter().take(5).map(|e| e.to_string()).collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            l.layer,
            l.total,
            f(l.max_over_mean),
            f(l.gini),
            l.hot.len(),
            top.join(" ")
        );
    }
    s.push('\n');
}

fn frequencies(s: &mut String, r: &AnalysisReport) {
    let _ = writeln!(
        s,
        "## Expert frequencies and skew\n\nHot: above {}x the layer's mean load.\n",
        r.config.hot_factor
    );
    let mut any = false;
    for p in [&r.frequencies.prefill, &r.frequencies.decode, &r.unphased]
        .into_iter()
        .flatten()
    {
        phase_table(s, p);
        any = true;
    }
    if !any {
        let _ = writeln!(s, "n/a: no data.\n");
    }
}

fn transitions(s: &mut String, title: &str, what: &str, t: &Option<TransitionReport>) {
    let _ = writeln!(s, "## {title} ({what})\n");
    let Some(t) = t else {
        let _ = writeln!(s, "n/a: needs per-token data (see the notes).\n");
        return;
    };
    let _ = writeln!(
        s,
        "Top {} of {} candidates ({:.0}%) cover {} of P(next | current), weighted over rows; \
         uniform would be {}, independent of the current expert {}. Range over steps: {} – {}.\n",
        t.candidates,
        t.candidates as f64 / t.uniform_coverage,
        100.0 * t.top_fraction,
        pct(t.coverage),
        pct(Some(t.uniform_coverage)),
        pct(t.independent_coverage),
        pct(t.min_coverage),
        pct(t.max_coverage),
    );
    let _ = writeln!(
        s,
        "| from layer | to layer | observations | coverage | independent |\n|---|---|---|---|---|"
    );
    for st in &t.steps {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            st.from_layer,
            st.to_layer,
            st.observations,
            pct(st.coverage),
            pct(st.independent_coverage)
        );
    }
    s.push('\n');
}

fn prefill_decode(s: &mut String, r: &AnalysisReport) {
    let _ = writeln!(s, "## Prefill against decode\n");
    let pd = &r.prefill_vs_decode;
    let all: Vec<_> = pd.workloads.iter().chain(pd.overall.as_ref()).collect();
    if all.is_empty() {
        let _ = writeln!(s, "n/a: needs data of both phases.\n");
        return;
    }
    let header: Vec<String> = r
        .config
        .coverage_top_ns
        .iter()
        .map(|n| format!("top-{n} coverage"))
        .collect();
    let _ = writeln!(
        s,
        "| workload | mean Spearman | min Spearman | layers ≥ 0.7 | mean Pearson | {} |\n|---|---|---|---|---|{}",
        header.join(" | "),
        "---|".repeat(header.len())
    );
    for c in &all {
        let covs: Vec<String> = c.mean_coverage.iter().map(|t| pct(t.share)).collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            c.workload.as_deref().unwrap_or("(all data pooled)"),
            f(c.mean_spearman),
            f(c.min_spearman),
            pct(c.share_spearman_ge_0_7),
            f(c.mean_pearson),
            covs.join(" | ")
        );
    }
    if let Some(c) = pd.overall.as_ref() {
        let _ = writeln!(
            s,
            "\nPer layer, all data pooled:\n\n| layer | Spearman | Pearson |\n|---|---|---|"
        );
        for l in &c.layers {
            let _ = writeln!(s, "| {} | {} | {} |", l.layer, f(l.spearman), f(l.pearson));
        }
    }
    s.push('\n');
}

fn coactivation(s: &mut String, r: &AnalysisReport) {
    let _ = writeln!(s, "## Co-activation\n");
    let Some(c) = r.coactivation.all.as_ref() else {
        let _ = writeln!(
            s,
            "n/a: needs per-token data with top-k ≥ 2 (see the notes).\n"
        );
        return;
    };
    let _ = writeln!(
        s,
        "Top {} pairs per layer ({:.0}% of pairs): mean share of co-activations {} (uniform {}); \
         their count over the random rate: max {}, mean {} (means over layers).\n",
        c.top_pairs_per_layer,
        100.0 * c.top_pair_fraction,
        pct(c.mean_top_share),
        pct(Some(c.uniform_share)),
        times(c.mean_top_ratio_max),
        times(c.mean_top_ratio_mean),
    );
    let _ = writeln!(
        s,
        "| layer | tokens | co-activations | top share | max ratio | mean ratio |\n|---|---|---|---|---|---|"
    );
    for l in &c.layers {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            l.layer,
            l.tokens,
            l.total,
            pct(l.top_share),
            f(l.top_ratio_max),
            f(l.top_ratio_mean)
        );
    }
    let _ = writeln!(
        s,
        "\nHottest pairs:\n\n| layer | pair | count | over random |\n|---|---|---|---|"
    );
    for p in &c.hottest {
        let _ = writeln!(
            s,
            "| {} | {}+{} | {} | {:.1}x |",
            p.layer, p.a, p.b, p.count, p.ratio
        );
    }
    s.push('\n');
}

fn workloads(s: &mut String, r: &AnalysisReport) {
    let w = &r.workloads;
    let _ = writeln!(s, "## Workloads\n");
    if w.profiles.is_empty() {
        let _ = writeln!(s, "n/a: no data.\n");
        return;
    }
    let _ = writeln!(
        s,
        "| workload / phase | selections | mean max/mean | worst layer max/mean | mean Gini |\n|---|---|---|---|---|"
    );
    for p in &w.profiles {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            profile_name(p),
            p.selections,
            f(p.skew.mean_max_over_mean),
            f(p.skew.worst_max_over_mean),
            f(p.skew.mean_gini)
        );
    }
    if !w.pairs.is_empty() {
        let _ = writeln!(
            s,
            "\nSimilarity (means over layers; hot set = top {}):\n\n| a | b | Jaccard of hot sets | Pearson | Spearman | pooled Pearson |\n|---|---|---|---|---|---|",
            w.top_n
        );
        const ROWS: usize = 200;
        for p in w.pairs.iter().take(ROWS) {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                profile_name(&w.profiles[p.a]),
                profile_name(&w.profiles[p.b]),
                f(p.mean_jaccard),
                f(p.mean_pearson),
                f(p.mean_spearman),
                f(p.pooled_pearson)
            );
        }
        if w.pairs.len() > ROWS {
            let _ = writeln!(s, "\n{} more pairs in report.json.", w.pairs.len() - ROWS);
        }
    }
    s.push('\n');
}
