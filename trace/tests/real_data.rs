//! The analysis on the real routing data in `shared/data` (see its README for the facts
//! asserted here). Skips, with a note, where the data is absent.

use std::path::{Path, PathBuf};

use moeflow_trace::analysis::AnalysisReport;
use moeflow_trace::{
    Analyzer, AnalyzerConfig, CountsTrace, Iteration, LayerRouting, ModelShape, Phase,
    RequestTrace, TraceItem,
};

/// The shared data folder: beside the main checkout (`../../shared/data` from the crate) or
/// beside a worktree folder one level deeper.
fn data_dir() -> Option<PathBuf> {
    [
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data"),
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data"),
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.join("README.md").is_file())
}

fn deepseek_shape() -> ModelShape {
    ModelShape {
        model: Some("deepseek-ai/DeepSeek-V3".into()),
        num_layers: 61,
        num_experts: 256,
        top_k: 8,
        moe_layers: (3..61).collect(),
    }
}

/// Test-only reader of an SGLang `{"logical_count": [[u64; 256]; 61]}` dump; the phase and
/// workload come from the file stem (`prefill_in1024`). The dumps write whole counts as
/// floats (`1024.0`).
fn sglang_counts(path: &Path) -> CountsTrace {
    #[derive(serde::Deserialize)]
    struct Dump {
        logical_count: Vec<Vec<f64>>,
    }
    let text = std::fs::read_to_string(path).unwrap();
    let dump: Dump = serde_json::from_str(&text).unwrap();
    let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
    let (phase, workload) = stem.split_once('_').unwrap();
    CountsTrace {
        id: stem.clone(),
        workload: Some(workload.to_string()),
        phase: Some(phase.parse().unwrap()),
        counts: dump
            .logical_count
            .into_iter()
            .map(|l| {
                assert!(l.iter().all(|c| c.fract() == 0.0 && *c >= 0.0));
                let l: Vec<u64> = l.into_iter().map(|c| c as u64).collect();
                l.iter().any(|&c| c > 0).then_some(l)
            })
            .collect(),
    }
}

fn deepseek_report(dir: &Path) -> AnalysisReport {
    let mut a = Analyzer::new(deepseek_shape(), AnalyzerConfig::default()).unwrap();
    let mut files: Vec<_> = std::fs::read_dir(dir.join("deepseek-v3-expert-counts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 8);
    for f in &files {
        a.add(&TraceItem::Counts(sglang_counts(f))).unwrap();
    }
    a.finish()
}

/// Test-only reader of the paper's per-request layout: element 0 the prefill (layer id ->
/// per-token expert lists), then one decode iteration per element.
fn paper_request(path: &Path, top_k: u16) -> RequestTrace {
    let text = std::fs::read_to_string(path).unwrap();
    let iters: Vec<serde_json::Map<String, serde_json::Value>> =
        serde_json::from_str(&text).unwrap();
    let mut iterations = Vec::new();
    for (i, it) in iters.iter().enumerate() {
        let mut layers: Vec<LayerRouting> = it
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| {
                let tokens: Vec<Vec<u16>> = serde_json::from_value(v.clone()).unwrap();
                LayerRouting {
                    layer: k.parse().unwrap(),
                    top_k,
                    experts: tokens.into_iter().flatten().collect(),
                    weights: None,
                }
            })
            .collect();
        layers.sort_by_key(|l| l.layer);
        iterations.push(Iteration {
            phase: if i == 0 {
                Phase::Prefill
            } else {
                Phase::Decode
            },
            layers,
        });
    }
    RequestTrace {
        id: path.file_name().unwrap().to_string_lossy().into_owned(),
        workload: Some("humaneval".into()),
        prompt_len: iterations.first().map_or(0, Iteration::num_tokens),
        started_ms: None,
        finished_ms: None,
        iterations,
    }
}

fn near(value: Option<f64>, want: f64, tol: f64, what: &str) {
    let v = value.unwrap_or_else(|| panic!("{what}: not available"));
    assert!(
        (v - want).abs() <= tol,
        "{what}: {v:.3}, expected {want} ± {tol}"
    );
}

fn skip(what: &str) {
    eprintln!("note: shared/data not found; skipping the {what} checks on real data");
}

fn profile<'a>(
    r: &'a AnalysisReport,
    workload: &str,
    phase: Phase,
) -> (
    usize,
    &'a moeflow_trace::analysis::workload::WorkloadProfile,
) {
    r.workloads
        .profiles
        .iter()
        .enumerate()
        .find(|(_, p)| p.workload.as_deref() == Some(workload) && p.phase == Some(phase))
        .unwrap_or_else(|| panic!("no profile {workload}/{phase}"))
}

fn pair_pearson(r: &AnalysisReport, a: usize, b: usize) -> Option<f64> {
    r.workloads
        .pairs
        .iter()
        .find(|p| (p.a, p.b) == (a.min(b), a.max(b)))
        .and_then(|p| p.mean_pearson)
}

/// README: the hottest expert carries 6-8x the mean load in prefill and about 6x in decode
/// (worst layer about 14x and 10x).
#[test]
fn deepseek_skew_matches_the_readme() {
    let Some(dir) = data_dir() else {
        return skip("DeepSeek skew");
    };
    let r = deepseek_report(&dir);
    assert_eq!(r.workloads.profiles.len(), 8);
    for p in &r.workloads.profiles {
        let name = format!("{:?}/{:?}", p.workload, p.phase);
        assert_eq!(p.skew.layers, 58, "{name}: the 58 MoE layers have data");
        match p.phase {
            Some(Phase::Prefill) => {
                let m = p.skew.mean_max_over_mean.unwrap();
                assert!((5.9..=8.3).contains(&m), "{name}: mean max/mean {m:.2}");
                near(p.skew.worst_max_over_mean, 13.5, 0.7, &name);
            }
            Some(Phase::Decode) => {
                near(p.skew.mean_max_over_mean, 5.8, 0.4, &name);
                near(p.skew.worst_max_over_mean, 10.4, 0.5, &name);
            }
            None => panic!("{name}: every dump has a phase"),
        }
    }
    // Pooled over workloads, the same picture.
    near(
        r.frequencies
            .prefill
            .as_ref()
            .unwrap()
            .summary
            .mean_max_over_mean,
        7.0,
        1.0,
        "pooled prefill",
    );
    near(
        r.frequencies
            .decode
            .as_ref()
            .unwrap()
            .summary
            .mean_max_over_mean,
        5.8,
        0.5,
        "pooled decode",
    );
}

/// README: prefill and decode of the same workload correlate at about 0.66 (Pearson), two
/// prefill workloads at about 0.94.
#[test]
fn deepseek_correlations_match_the_readme() {
    let Some(dir) = data_dir() else {
        return skip("DeepSeek correlation");
    };
    let r = deepseek_report(&dir);
    let pd = r
        .prefill_vs_decode
        .workloads
        .iter()
        .find(|c| c.workload.as_deref() == Some("in1000out1000"))
        .unwrap();
    near(
        pd.mean_pearson,
        0.66,
        0.05,
        "in1000out1000 prefill vs decode",
    );
    let (a, _) = profile(&r, "in1000out1000", Phase::Prefill);
    let (b, _) = profile(&r, "in1000out1000", Phase::Decode);
    near(
        pair_pearson(&r, a, b),
        0.66,
        0.05,
        "the same pair, workload table",
    );
    let (p1, _) = profile(&r, "in1024", Phase::Prefill);
    let (p2, _) = profile(&r, "in4096", Phase::Prefill);
    near(
        pair_pearson(&r, p1, p2),
        0.94,
        0.05,
        "in1024 vs in4096 prefill",
    );
    // Every two prefill workloads agree far better than prefill and decode do.
    let prefill: Vec<usize> = r
        .workloads
        .profiles
        .iter()
        .enumerate()
        .filter(|(_, p)| p.phase == Some(Phase::Prefill))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(prefill.len(), 6);
    for (k, &x) in prefill.iter().enumerate() {
        for &y in &prefill[k + 1..] {
            let v = pair_pearson(&r, x, y).unwrap();
            assert!(v > 0.84, "prefill pair {x}/{y}: {v:.3}");
        }
    }
    // Aggregate counts cannot support the per-token statistics: reported as missing.
    assert!(r.layer_transitions.all.is_none());
    assert!(r.token_transitions.is_none());
    assert!(r.coactivation.all.is_none());
    assert!(r.notes.iter().any(|n| n.contains("not available")));
    let json = serde_json::to_value(&r).unwrap();
    assert!(json["coactivation"]["all"].is_null());
}

fn mixtral_report(dir: &Path) -> AnalysisReport {
    let shape = ModelShape {
        model: Some("mistralai/Mixtral-8x7B-Instruct-v0.1".into()),
        num_layers: 32,
        num_experts: 8,
        top_k: 2,
        moe_layers: (0..32).collect(),
    };
    let req = paper_request(
        &dir.join("mixtral-8x7b-routing/humaneval_p0.paper-format.json"),
        2,
    );
    let mut a = Analyzer::new(shape, AnalyzerConfig::default()).unwrap();
    a.add(&TraceItem::Request(req)).unwrap();
    a.finish()
}

/// Per-token data supports every statistic; real routing is more predictable than its
/// marginals alone (the paper's observations 1 and 2, in direction).
#[test]
fn mixtral_per_token_statistics() {
    let Some(dir) = data_dir() else {
        return skip("Mixtral");
    };
    let r = mixtral_report(&dir);
    assert_eq!(r.inputs.prefill_tokens, 59);
    assert_eq!(r.inputs.decode_tokens, 77);
    let lt = r.layer_transitions.all.as_ref().unwrap();
    assert_eq!(lt.steps.len(), 31);
    assert_eq!(lt.candidates, 2);
    let (cov, ind) = (lt.coverage.unwrap(), lt.independent_coverage.unwrap());
    assert!(
        cov > lt.uniform_coverage && cov > ind,
        "layer level {cov:.3} vs {ind:.3}"
    );
    let tt = r.token_transitions.as_ref().unwrap();
    let (cov, ind) = (tt.coverage.unwrap(), tt.independent_coverage.unwrap());
    assert!(
        cov > tt.uniform_coverage && cov > ind,
        "token level {cov:.3} vs {ind:.3}"
    );
    assert_eq!(tt.steps[0].observations, 76);
    let co = r.coactivation.all.as_ref().unwrap();
    assert_eq!(co.layers.len(), 32);
    let share = co.mean_top_share.unwrap();
    assert!(
        share > co.uniform_share && share < 1.0,
        "top pair share {share:.3}"
    );
    let pd = r.prefill_vs_decode.workloads.first().unwrap();
    assert!(pd.mean_spearman.is_some());
    assert_eq!(
        pd.mean_coverage[1].share, None,
        "top-10 of 8 experts is undefined"
    );
    // Mixtral's routing is far more even than DeepSeek-V3's.
    let skew = r
        .frequencies
        .prefill
        .as_ref()
        .unwrap()
        .summary
        .mean_max_over_mean
        .unwrap();
    assert!((1.2..3.0).contains(&skew), "{skew}");

    let out = tempfile::tempdir().unwrap();
    let files = moeflow_trace::write_report(&r, out.path()).unwrap();
    assert!(files.iter().any(|f| f.ends_with("layer_transition.svg")));
    assert!(files.iter().any(|f| f.ends_with("token_transition.svg")));
}

/// The DeepSeek report renders and plots with per-token statistics marked missing.
#[test]
fn deepseek_report_writes() {
    let Some(dir) = data_dir() else {
        return skip("DeepSeek report");
    };
    let r = deepseek_report(&dir);
    let out = tempfile::tempdir().unwrap();
    let files = moeflow_trace::write_report(&r, out.path()).unwrap();
    assert!(files.iter().any(|f| f.ends_with("frequency_prefill.svg")));
    assert!(files
        .iter()
        .any(|f| f.ends_with("prefill_decode_spearman.svg")));
    assert!(!files.iter().any(|f| f.ends_with("layer_transition.svg")));
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(md.contains("## Layer level") && md.contains("n/a"));
}

#[test]
#[ignore = "writes the real-data reports to $MOEFLOW_REPORT_DIR for a person to look at"]
fn write_real_data_reports() {
    let (Some(dir), Ok(out)) = (data_dir(), std::env::var("MOEFLOW_REPORT_DIR")) else {
        return skip("report writing");
    };
    let out = PathBuf::from(out);
    moeflow_trace::write_report(&deepseek_report(&dir), &out.join("deepseek-v3")).unwrap();
    moeflow_trace::write_report(&mixtral_report(&dir), &out.join("mixtral")).unwrap();
}
