//! Placement quality on real routing data: the DeepSeek-V3 expert counts in
//! `shared/data/deepseek-v3-expert-counts` (see `shared/data/README.md`). Plans are made from
//! the prefill counts of `in1000out1000` and replayed on its decode counts; the decode file is
//! never planned from. Skipped, with a note, where the data is absent.

use std::path::PathBuf;

use moeflow_placement::eval::{DeviceProfile, EvalOptions, Evaluator};
use moeflow_placement::planner::{by_name, expected_busiest, load_noise, PlanInput};
use moeflow_placement::PlanTarget;
use moeflow_trace::{LoadSummary, ModelShape, Phase, TraceItem};

const RANKS_PER_NODE: usize = 8;
const GROUPS: usize = 8;
const PREFILL: [&str; 6] = [
    "prefill_in1000out1000",
    "prefill_in2000out100",
    "prefill_in1024",
    "prefill_in2048",
    "prefill_in4096",
    "prefill_in512",
];

fn data_dir() -> Option<PathBuf> {
    let root = std::env::var_os("MOEFLOW_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data"))
        });
    let dir = root.join("deepseek-v3-expert-counts");
    dir.is_dir().then_some(dir)
}

fn shape() -> ModelShape {
    ModelShape {
        model: Some("deepseek-ai/DeepSeek-V3".into()),
        num_layers: 61,
        num_experts: 256,
        top_k: 8,
        moe_layers: (3..61).collect(),
    }
}

/// One SGLang dump, read by the trace crate's reader; it must fit DeepSeek-V3's shape (layers
/// 0-2 dense, 58 MoE layers of 256 experts).
fn read(dir: &std::path::Path, name: &str, phase: Phase) -> TraceItem {
    let path = dir.join(format!("{name}.json"));
    let bytes = std::fs::read(&path).unwrap();
    let c = moeflow_trace::io::sglang::parse(&bytes, name.into(), Some(name.into()), Some(phase))
        .unwrap();
    let item = TraceItem::Counts(c);
    item.validate(&shape()).unwrap();
    item
}

fn summary(item: &TraceItem) -> LoadSummary {
    let mut s = LoadSummary::new(shape(), false);
    s.add(item).unwrap();
    s
}

/// Busiest/mean on `eval`, averaged over layers.
fn score(name: &str, input: &PlanInput, eval: &TraceItem) -> f64 {
    let plan = by_name(name).unwrap().plan(input).unwrap();
    let opts = EvalOptions {
        ranks_per_node: input.ranks_per_node,
        ..EvalOptions::default()
    };
    let mut ev = Evaluator::new(&plan, &shape(), DeviceProfile::h100(), opts).unwrap();
    ev.add(eval).unwrap();
    ev.finish().overall.busiest_over_mean.unwrap()
}

#[test]
fn planners_on_deepseek_v3_counts() {
    let Some(dir) = data_dir() else {
        eprintln!("skipped: no deepseek-v3-expert-counts (set MOEFLOW_SHARED_DATA)");
        return;
    };
    // The noise the planners prepare for, from the prefill workloads only.
    let prefill: Vec<LoadSummary> = PREFILL
        .iter()
        .map(|n| summary(&read(&dir, n, Phase::Prefill)))
        .collect();
    let loads: Vec<_> = prefill.iter().map(|s| &s.prefill).collect();
    let noise = load_noise(&loads, GROUPS).unwrap();
    assert!((0.15..0.25).contains(&noise.group), "{noise:?}");
    assert!((0.3..0.45).contains(&noise.expert), "{noise:?}");

    let decode = read(&dir, "decode_in1000out1000", Phase::Decode);
    let target = PlanTarget {
        num_experts: 256,
        moe_layers: (3..61).collect(),
    };
    // (ranks, contiguous, eplb-global with one redundant slot), README and MISSION anchors.
    for (ranks, contiguous, eplb_r1) in [(8, 2.0, 1.15), (32, 2.9, 1.41)] {
        for r in [0, 1] {
            let pin = PlanInput::from_load(target.clone(), &prefill[0].prefill, ranks, r)
                .unwrap()
                .with_nodes(Some(RANKS_PER_NODE.min(ranks)))
                .with_groups(GROUPS)
                .with_top_k(8)
                .with_load_noise(noise);
            let global = pin.clone().with_nodes(None);
            let cont = score("contiguous", &pin, &decode);
            assert!(
                (cont - contiguous).abs() <= 0.1,
                "{ranks} R{r}: contiguous {cont}"
            );
            let eg = score("eplb", &global, &decode);
            if r == 1 {
                assert!(
                    (eg - eplb_r1).abs() <= 0.05,
                    "{ranks} R{r}: eplb-global {eg}"
                );
            }
            let eh = score("eplb", &pin, &decode);
            // By construction, on the planning data: never worse than EPLB in either mode by
            // the planners' own criterion, layer by layer.
            let crit = |name: &str, input: &PlanInput| {
                expected_busiest(&pin, &by_name(name).unwrap().plan(input).unwrap()).unwrap()
            };
            let (ceg, ceh) = (crit("eplb", &global), crit("eplb", &pin));
            for name in ["prefill-aware", "traffic-aware"] {
                let c = crit(name, &pin);
                for (l, v) in c.iter().enumerate() {
                    let bound = ceg[l].min(ceh[l]);
                    assert!(*v <= bound * (1.0 + 1e-9), "{name} {ranks} R{r} layer {l}");
                }
                // On the decode loads they were not planned from: never above eplb (the
                // issue's, hierarchical where it applies). prefill-aware leaves EPLB's
                // layouts only for a clear win (`DEFAULT_MIN_WIN_SHARE`), so it stays within
                // rounding of eplb-global too; traffic-aware's spreading of hot replicas over
                // nodes, which eplb-global does not do, may cost a little (measured: at most
                // 0.003, e.g. in2000out100, 64 ranks, R=1: 1.400 against 1.397; BENCHMARKS.md).
                let m = score(name, &pin, &decode);
                let margin = if name == "prefill-aware" { 5e-4 } else { 0.005 };
                assert!(
                    m <= eg + margin,
                    "{name} {ranks} R{r}: {m} > eplb-global {eg}"
                );
                assert!(m <= eh + 1e-9, "{name} {ranks} R{r}: {m} > eplb {eh}");
                eprintln!("{ranks} R{r} {name} {m:.4} eplb-global {eg:.4} eplb {eh:.4}");
            }
        }
    }
}
