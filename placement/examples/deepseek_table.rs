//! Placement quality on the DeepSeek-V3 expert counts: plan from prefill counts, replay the
//! decode counts, and print the busiest rank's load over the mean (averaged over the 58 MoE
//! layers) for every planner, 8/32/64 ranks, 0 and 1 redundant slots per rank.
//!
//! ```text
//! cargo run --release -p moeflow-placement --example deepseek_table -- [DIR]
//! ```
//!
//! DIR defaults to `/work/shared/data/deepseek-v3-expert-counts` (SGLang's expert-count
//! dumps, `{"logical_count": [[count; 256]; 61]}`). Ranks are grouped 8 per node and
//! DeepSeek-V3's 8 expert groups are given to EPLB, as in a deployment on 8-GPU nodes;
//! `eplb-global` is EPLB without node information. The load-aware planners prepare for the
//! load noise measured between the prefill workloads (never the decode files). "decode-informed"
//! is the better of EPLB and prefill-aware planned on the decode counts themselves, without
//! noise: what a plan that knew the decode loads in advance could reach.

use std::error::Error;
use std::path::{Path, PathBuf};

use moeflow_placement::eval::{DeviceProfile, EvalOptions, Evaluator};
use moeflow_placement::planner::{by_name, load_noise, LoadNoise, PlanInput};
use moeflow_placement::PlanTarget;
use moeflow_trace::{CountsTrace, LoadSummary, ModelShape, Phase, TraceItem};

const DEFAULT_DIR: &str = "/work/shared/data/deepseek-v3-expert-counts";
/// Every prefill workload of the data set; the planners' load noise is measured on these.
const PREFILL: [&str; 6] = [
    "prefill_in1000out1000",
    "prefill_in2000out100",
    "prefill_in1024",
    "prefill_in2048",
    "prefill_in4096",
    "prefill_in512",
];
const RANKS_PER_NODE: usize = 8;
const GROUPS: usize = 8;

fn shape() -> ModelShape {
    ModelShape {
        model: Some("deepseek-ai/DeepSeek-V3".into()),
        num_layers: 61,
        num_experts: 256,
        top_k: 8,
        moe_layers: (3..61).collect(),
    }
}

/// Reads one SGLang expert-count dump; layers whose counts are all zero are dense.
fn read_counts(path: &Path, phase: Phase) -> Result<TraceItem, Box<dyn Error>> {
    #[derive(serde::Deserialize)]
    struct Dump {
        logical_count: Vec<Vec<f64>>,
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let dump: Dump = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut counts = Vec::with_capacity(dump.logical_count.len());
    for (layer, row) in dump.logical_count.iter().enumerate() {
        if row.iter().all(|&c| c == 0.0) {
            counts.push(None);
            continue;
        }
        let mut out = Vec::with_capacity(row.len());
        for (x, &c) in row.iter().enumerate() {
            if !(c >= 0.0 && c.fract() == 0.0) {
                return Err(
                    format!("{}: layer {layer} expert {x}: count {c}", path.display()).into(),
                );
            }
            out.push(c as u64);
        }
        counts.push(Some(out));
    }
    Ok(TraceItem::Counts(CountsTrace {
        id: path.display().to_string(),
        workload: path.file_stem().map(|s| s.to_string_lossy().into_owned()),
        phase: Some(phase),
        counts,
    }))
}

struct Data {
    shape: ModelShape,
    item: TraceItem,
    summary: LoadSummary,
    name: String,
}

fn data(dir: &Path, name: &str) -> Result<Data, Box<dyn Error>> {
    let phase = if name.starts_with("decode") {
        Phase::Decode
    } else {
        Phase::Prefill
    };
    let item = read_counts(&dir.join(format!("{name}.json")), phase)?;
    let mut summary = LoadSummary::new(shape(), false);
    summary.add(&item)?;
    Ok(Data {
        shape: shape(),
        item,
        summary,
        name: name.to_string(),
    })
}

fn input(
    d: &Data,
    ranks: usize,
    redundant: usize,
    noise: LoadNoise,
) -> Result<PlanInput, Box<dyn Error>> {
    let target = PlanTarget {
        num_experts: d.shape.num_experts,
        moe_layers: d.shape.moe_layers.clone(),
    };
    let phase = match &d.item {
        TraceItem::Counts(c) => c.phase,
        TraceItem::Request(_) => None,
    };
    Ok(
        PlanInput::from_load(target, &d.summary.select(phase), ranks, redundant)?
            .with_nodes(Some(RANKS_PER_NODE.min(ranks)))
            .with_groups(GROUPS)
            .with_top_k(d.shape.top_k)
            .with_load_noise(noise)
            .with_source(d.shape.model.clone(), Some(d.name.clone())),
    )
}

/// Busiest/mean averaged over layers of `planner`'s plan from `input`, replayed on `eval`.
fn score(planner: &str, input: &PlanInput, eval: &Data) -> Result<f64, Box<dyn Error>> {
    let plan = by_name(planner)?.plan(input)?;
    let opts = EvalOptions {
        ranks_per_node: input.ranks_per_node,
        ..EvalOptions::default()
    };
    let mut ev = Evaluator::new(&plan, &eval.shape, DeviceProfile::h100(), opts)?;
    ev.add(&eval.item)?;
    Ok(ev.finish().overall.busiest_over_mean.unwrap_or(f64::NAN))
}

fn main() -> Result<(), Box<dyn Error>> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| DEFAULT_DIR.into()),
    );
    let cases = [
        ("prefill_in1000out1000", "decode_in1000out1000"),
        ("prefill_in2000out100", "decode_in2000out100"),
        ("prefill_in1024", "decode_in1000out1000"),
        ("prefill_in4096", "decode_in2000out100"),
    ];
    let planners = [
        "contiguous",
        "round-robin",
        "eplb",
        "prefill-aware",
        "traffic-aware",
    ];
    // The load noise the planners prepare for, from the prefill workloads only.
    let prefill: Vec<Data> = PREFILL
        .iter()
        .map(|n| data(&dir, n))
        .collect::<Result<_, _>>()?;
    let loads: Vec<_> = prefill.iter().map(|d| &d.summary.prefill).collect();
    let noise = load_noise(&loads, GROUPS).ok_or("no two prefill workloads share a layer")?;
    println!(
        "load noise (largest shift between two prefill workloads): group {:.3}, expert {:.3}",
        noise.group, noise.expert
    );
    println!();
    println!(
        "| plan from | evaluate on | ranks | R | contiguous | round-robin | eplb | eplb-global | prefill-aware | traffic-aware | decode-informed |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (plan_from, eval_on) in cases {
        let p = data(&dir, plan_from)?;
        let d = data(&dir, eval_on)?;
        for ranks in [8, 32, 64] {
            for redundant in [0, 1] {
                let pin = input(&p, ranks, redundant, noise)?;
                let mut row = Vec::new();
                for planner in planners {
                    row.push(score(planner, &pin, &d)?);
                }
                let global = pin.clone().with_nodes(None);
                row.insert(3, score("eplb", &global, &d)?);
                // Planned on the decode loads exactly: no noise to prepare for.
                let din = input(&d, ranks, redundant, LoadNoise::NONE)?;
                let informed = score("eplb", &din, &d)?.min(score("prefill-aware", &din, &d)?);
                row.push(informed);
                let cells: Vec<String> = row.iter().map(|v| format!("{v:.3}")).collect();
                println!(
                    "| {plan_from} | {eval_on} | {ranks} | {redundant} | {} |",
                    cells.join(" | ")
                );
            }
        }
    }
    Ok(())
}
