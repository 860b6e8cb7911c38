//! Trace sources on the command line, shared by `moeflow trace` and `moeflow place`: how the
//! user fills in what a format does not state, how several sources become one model shape,
//! and how skipped files are reported and turned into the exit status.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use moeflow_trace::{CountsTrace, LoadSummary, ModelShape, Phase, ReadOptions, ReadReport, Source};

/// Exit status of a run that finished but skipped bad files or sources.
pub const EXIT_SKIPPED: i32 = 3;

#[derive(Debug, Clone, clap::Args)]
pub struct SourceArgs {
    /// Routed experts per MoE layer, for formats that do not state it (the paper's JSON).
    #[arg(long)]
    pub num_experts: Option<usize>,
    /// Experts per token, for formats that do not state it (SGLang's counts).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Parsing threads (default: the available cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl SourceArgs {
    pub fn options(&self) -> ReadOptions {
        ReadOptions {
            num_experts: self.num_experts,
            top_k: self.top_k,
            threads: self.threads.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
            }),
            progress: true,
        }
    }
}

/// Opens every path, detecting its format (the trace crate logs what each turned out to be).
pub fn open_all(paths: &[PathBuf], args: &SourceArgs) -> anyhow::Result<Vec<Source>> {
    let opts = args.options();
    paths
        .iter()
        .map(|p| moeflow_trace::open(p, &opts).with_context(|| format!("{}", p.display())))
        .collect()
}

/// The one shape several sources share: the same layers and expert count; a top-k that one
/// source states (SGLang counts do not) is taken from another. A source of another model is
/// an error naming it and what differs.
pub fn common_shape(sources: &[Source]) -> anyhow::Result<ModelShape> {
    let Some(first) = sources.first() else {
        bail!("no trace source given");
    };
    let mut shape = first.shape().clone();
    for s in &sources[1..] {
        let o = s.shape();
        let what = if o.num_experts != shape.num_experts {
            Some(format!(
                "{} experts, not {}",
                o.num_experts, shape.num_experts
            ))
        } else if o.num_layers != shape.num_layers || o.moe_layers != shape.moe_layers {
            Some(format!(
                "{} layers ({} MoE), not {} ({} MoE)",
                o.num_layers,
                o.moe_layers.len(),
                shape.num_layers,
                shape.moe_layers.len()
            ))
        } else if o.top_k != 0 && shape.top_k != 0 && o.top_k != shape.top_k {
            Some(format!("top-{}, not top-{}", o.top_k, shape.top_k))
        } else {
            None
        };
        if let Some(what) = what {
            bail!(
                "{}: another model than {} ({what})",
                s.path().display(),
                first.path().display()
            );
        }
        if shape.top_k == 0 {
            shape.top_k = o.top_k;
        }
        if shape.model.is_none() {
            shape.model.clone_from(&o.model);
        }
    }
    Ok(shape)
}

/// Prints every skipped file with its reason and returns how many there were.
pub fn report_skipped(source: &Path, report: &ReadReport) -> usize {
    for s in &report.skipped {
        eprintln!("skipped {}: {}", s.path, s.reason);
    }
    if !report.skipped.is_empty() {
        eprintln!(
            "{}: {} file(s) skipped, {} item(s) read",
            source.display(),
            report.skipped.len(),
            report.items
        );
    }
    report.skipped.len()
}

/// Folds every source with per-thread accumulators and merges them into one; returns the
/// accumulator, the items and bytes read, and the number of skipped files.
pub fn fold_all<A: Send + Clone>(
    sources: &[Source],
    init: impl Fn() -> A + Sync,
    add: impl Fn(&mut A, moeflow_trace::TraceItem) + Sync,
    merge: impl Fn(&mut A, &A) -> anyhow::Result<()>,
) -> anyhow::Result<(A, u64, u64, usize)> {
    let mut total = init();
    let (mut items, mut bytes, mut skipped) = (0, 0, 0);
    for s in sources {
        let (parts, report) = s
            .fold(&init, &add)
            .with_context(|| format!("{}", s.path().display()))?;
        for p in &parts {
            merge(&mut total, p)?;
        }
        items += report.items;
        bytes += report.bytes;
        skipped += report_skipped(s.path(), &report);
    }
    Ok((total, items, bytes, skipped))
}

/// The expert loads of every source, per phase; `pairs` also counts co-activated pairs
/// (E²/2 counters per layer and phase, filled only by per-token formats). Returns the loads
/// and the number of skipped files.
pub fn load_summary(
    sources: &[Source],
    shape: &ModelShape,
    pairs: bool,
) -> anyhow::Result<(LoadSummary, usize)> {
    let (summary, _, _, skipped) = fold_all(
        sources,
        || LoadSummary::new(shape.clone(), pairs),
        |s, item| {
            // The source validated the item against this shape already.
            let _ = s.add(&item);
        },
        |t, p| {
            t.merge(p);
            Ok(())
        },
    )?;
    Ok((summary, skipped))
}

/// Every item of `sources` in `phase` (every phase when `None`), merged into one count
/// distribution (per-token items counted per (layer, expert)) and folded onto `target` by
/// `moeflow_trace::fold`'s rules. Returns the folded counts and the number of skipped files.
pub fn folded_counts(
    sources: &[Source],
    phase: Option<Phase>,
    target: &ModelShape,
) -> anyhow::Result<(CountsTrace, usize)> {
    let shape = common_shape(sources)?;
    let (summary, skipped) = load_summary(sources, &shape, false)?;
    let load = summary.select(phase);
    let names: Vec<String> = sources
        .iter()
        .map(|s| s.path().display().to_string())
        .collect();
    if load.is_empty() {
        bail!(
            "{} has no selections in {} (SGLang dumps take their phase from the file name: prefill_*, decode_*)",
            names.join(", "),
            phase.map_or("any phase".to_string(), |p| format!("the {p} phase"))
        );
    }
    let merged = load.to_counts(shape.num_layers, names.join(" + "), phase);
    let folded = moeflow_trace::fold_counts(&merged, &shape, target).with_context(|| {
        format!(
            "folding {} ({} layers, {} experts) onto {} MoE layers of {} experts{}",
            names.join(", "),
            shape.moe_layers.len(),
            shape.num_experts,
            target.moe_layers.len(),
            target.num_experts,
            phase.map_or(String::new(), |p| format!(", {p} phase")),
        )
    })?;
    Ok((folded, skipped))
}

/// Ends the process with [`EXIT_SKIPPED`] when anything was skipped, after saying so: the
/// outputs are written, but a script must be able to tell that they miss some input.
pub fn exit_if_skipped(skipped: usize) -> anyhow::Result<()> {
    if skipped > 0 {
        eprintln!("{skipped} file(s) or item(s) skipped; exit status {EXIT_SKIPPED}");
        std::process::exit(EXIT_SKIPPED);
    }
    Ok(())
}
