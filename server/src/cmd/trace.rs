//! `moeflow trace`: analyse expert-selection traces (the paper's observations, with plots),
//! generate synthetic ones, convert between formats, and describe a source.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context};
use moeflow_trace::io::{jsonl, sglang};
use moeflow_trace::{
    Analyzer, AnalyzerConfig, BinaryWriter, ModelShape, PaperTreeWriter, Phase, RequestTrace,
    SynthConfig, SynthGenerator, TraceItem,
};

use super::place_plan::PhaseArg;
use super::sources::{self, exit_if_skipped, SourceArgs};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: TraceCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum TraceCommand {
    /// Compute the paper's observations over one or more sources: JSON, Markdown and plots.
    Analyze(AnalyzeArgs),
    /// Generate a seeded synthetic trace in any supported format.
    Synth(SynthArgs),
    /// Re-write a source in another format.
    Convert(ConvertArgs),
    /// Print a source's format and model shape (and where each part of the shape came from).
    Info(InfoArgs),
    /// Fold a large model's expert counts onto a (small) checkpoint's layers and experts and
    /// write them as an SGLang count dump: input for `moeflow place plan --from` and for
    /// `--route-replay`. Rules: `moeflow_trace::fold`.
    Fold(FoldArgs),
}

#[derive(Debug, clap::Args)]
pub struct AnalyzeArgs {
    /// Trace sources: paper JSON trees (tar.gz subjects too), SGLang count dumps, JSONL
    /// routing logs, moeflow binary traces; files or folders. All must be of one model.
    #[arg(required = true)]
    pub sources: Vec<PathBuf>,
    /// Folder for report.json, report.md and the SVG plots.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub source: SourceArgs,
    /// Analyzer settings as JSON (keys of `AnalyzerConfig`: hot_factor, top_n, ...).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Skip co-activation pairs and transitions (frequencies only; much faster).
    #[arg(long)]
    pub frequencies_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutFormat {
    /// The paper's tree: `<out>/<org>/<model>/<benchmark>/<subject>/<id>.json`.
    Paper,
    /// moeflow's binary format, one file.
    Binary,
    /// JSONL rows (one per request, layer and token), one file.
    Jsonl,
    /// SGLang count dumps, one `<phase>_<workload>.json` per workload and phase.
    Sglang,
}

#[derive(Debug, clap::Args)]
pub struct SynthArgs {
    /// Output file (binary, jsonl) or folder (paper, sglang).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value = "paper")]
    pub format: OutFormat,
    /// Start from a preset: `small` (16 experts, top-2) or `deepseek-v3` (61 layers, 256
    /// experts, top-8).
    #[arg(long, default_value = "small")]
    pub preset: String,
    /// Knobs as a JSON file (keys of `SynthConfig`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// One knob, `key=value` (e.g. `zipf_exponent=1.2`, `prompt_len=[64,512]`); repeatable,
    /// applied after --config.
    #[arg(long = "set")]
    pub sets: Vec<String>,
    /// Keep generating requests until this much has been written (e.g. `2G`, `500M`);
    /// overrides the `requests` knob. Not for sglang (one dump per workload and phase).
    #[arg(long)]
    pub target_bytes: Option<String>,
    /// Generating threads (default: the available cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Debug, clap::Args)]
pub struct ConvertArgs {
    pub source: PathBuf,
    #[arg(long, value_enum)]
    pub to: OutFormat,
    /// Output file (binary, jsonl) or folder (paper, sglang).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub source_args: SourceArgs,
}

#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    pub source: PathBuf,
    #[command(flatten)]
    pub source_args: SourceArgs,
}

#[derive(Debug, clap::Args)]
pub struct FoldArgs {
    /// Trace sources (any format; several are merged). Per-token data is counted per
    /// (layer, expert).
    #[arg(required = true)]
    pub sources: Vec<PathBuf>,
    /// The checkpoint to fold onto (its MoE layers and expert count).
    #[arg(long)]
    pub model: PathBuf,
    /// The folded counts, an SGLang dump. SGLang dumps carry their phase in the file name:
    /// name it `prefill_<x>.json` or `decode_<x>.json` to keep the phase label.
    #[arg(long)]
    pub out: PathBuf,
    /// Which phase of the sources to fold (`all` merges every phase).
    #[arg(long, value_enum, default_value = "all")]
    pub phase: PhaseArg,
    #[command(flatten)]
    pub source: SourceArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        TraceCommand::Analyze(a) => analyze(a),
        TraceCommand::Synth(a) => synth(a),
        TraceCommand::Convert(a) => convert(a),
        TraceCommand::Info(a) => info(a),
        TraceCommand::Fold(a) => fold(a),
    }
}

/// A thread's analyzer plus the items it had to refuse (none when sources agree on the shape).
#[derive(Clone)]
struct AnalyzeAcc {
    analyzer: Analyzer,
    refused: Vec<(String, String)>,
}

fn analyze(a: AnalyzeArgs) -> anyhow::Result<()> {
    let mut config = match &a.config {
        Some(p) => serde_json::from_str::<AnalyzerConfig>(
            &std::fs::read_to_string(p).with_context(|| format!("--config {}", p.display()))?,
        )
        .with_context(|| format!("--config {}", p.display()))?,
        None => AnalyzerConfig::default(),
    };
    if a.frequencies_only {
        config.coactivation = false;
        config.transitions = false;
    }
    let srcs = sources::open_all(&a.sources, &a.source)?;
    let shape = sources::common_shape(&srcs)?;
    // Checked once here, so that the per-thread constructor below cannot fail.
    let proto = Analyzer::new(shape.clone(), config.clone()).context("analyzer")?;
    let start = Instant::now();
    let (acc, items, bytes, mut skipped) = sources::fold_all(
        &srcs,
        || AnalyzeAcc {
            analyzer: proto.clone(),
            refused: Vec::new(),
        },
        |acc, item| {
            if let Err(e) = acc.analyzer.add(&item) {
                acc.refused.push((item.id().to_string(), e.to_string()));
            }
        },
        |total, part| {
            total.analyzer.merge(&part.analyzer)?;
            total.refused.extend(part.refused.iter().cloned());
            Ok(())
        },
    )?;
    let secs = start.elapsed().as_secs_f64();
    for (id, why) in &acc.refused {
        eprintln!("skipped {id}: {why}");
    }
    skipped += acc.refused.len();
    let report = acc.analyzer.finish();
    let written = moeflow_trace::write_report(&report, &a.out)
        .with_context(|| format!("writing the report to {}", a.out.display()))?;
    let mbs = bytes as f64 / 1e6 / secs.max(1e-9);
    println!(
        "analysed {items} item(s), {:.1} MB in {secs:.2} s ({mbs:.1} MB/s); wrote {} file(s) to {}",
        bytes as f64 / 1e6,
        written.len(),
        a.out.display()
    );
    exit_if_skipped(skipped)
}

/// `2G`, `500M`, `64k`, `1000` (powers of 1024 for the suffixes).
fn parse_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_lowercase() {
                'k' => 1u64 << 10,
                'm' => 1 << 20,
                'g' => 1 << 30,
                't' => 1 << 40,
                _ => bail!("--target-bytes {s}: unknown suffix `{c}` (k, M, G, T)"),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: f64 = num
        .parse()
        .with_context(|| format!("--target-bytes {s}: not a size"))?;
    if !(n.is_finite() && n > 0.0) {
        bail!("--target-bytes {s}: must be positive");
    }
    Ok((n * mult as f64) as u64)
}

/// Where requests go, shared by `synth` and `convert`.
enum Sink {
    Paper(PaperTreeWriter),
    Binary(Mutex<BinaryWriter<std::io::BufWriter<std::fs::File>>>),
    Jsonl(Mutex<std::io::BufWriter<std::fs::File>>),
}

impl Sink {
    fn create(
        format: OutFormat,
        out: &std::path::Path,
        shape: &ModelShape,
    ) -> anyhow::Result<Self> {
        let model = shape.model.clone().unwrap_or_else(|| "unknown".into());
        Ok(match format {
            OutFormat::Paper => Sink::Paper(PaperTreeWriter::new(out, &model, shape)?),
            OutFormat::Binary => Sink::Binary(Mutex::new(BinaryWriter::create(out, shape)?)),
            OutFormat::Jsonl => {
                let f = std::fs::File::create(out)
                    .with_context(|| format!("creating {}", out.display()))?;
                Sink::Jsonl(Mutex::new(std::io::BufWriter::new(f)))
            }
            OutFormat::Sglang => bail!("sglang dumps hold counts, not requests"),
        })
    }

    /// Writes one request; returns the bytes it took.
    fn write(&self, r: &RequestTrace) -> anyhow::Result<u64> {
        match self {
            Sink::Paper(w) => Ok(w.write(r)?.bytes),
            Sink::Binary(w) => {
                let mut w = w.lock().map_err(|_| anyhow::anyhow!("writer poisoned"))?;
                Ok(w.append(r)?)
            }
            Sink::Jsonl(w) => {
                let mut text = String::new();
                jsonl::render(r, &mut text);
                let mut w = w.lock().map_err(|_| anyhow::anyhow!("writer poisoned"))?;
                w.write_all(text.as_bytes())?;
                Ok(text.len() as u64)
            }
        }
    }

    fn finish(self) -> anyhow::Result<()> {
        match self {
            Sink::Paper(_) => Ok(()),
            Sink::Binary(w) => {
                let w = w
                    .into_inner()
                    .map_err(|_| anyhow::anyhow!("writer poisoned"))?;
                w.finish()?.flush()?;
                Ok(())
            }
            Sink::Jsonl(w) => {
                w.into_inner()
                    .map_err(|_| anyhow::anyhow!("writer poisoned"))?
                    .flush()?;
                Ok(())
            }
        }
    }
}

fn synth(a: SynthArgs) -> anyhow::Result<()> {
    let mut config = match a.preset.as_str() {
        "small" => SynthConfig::default(),
        "deepseek-v3" => SynthConfig::deepseek_v3(),
        other => bail!("--preset {other}: expected small or deepseek-v3"),
    };
    if let Some(p) = &a.config {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("--config {}", p.display()))?;
        config =
            serde_json::from_str(&text).with_context(|| format!("--config {}", p.display()))?;
    }
    config
        .apply_sets(a.sets.iter().map(String::as_str))
        .context("--set")?;
    let target = a.target_bytes.as_deref().map(parse_size).transpose()?;
    let gen = SynthGenerator::new(config).context("synthetic trace config")?;
    let shape = gen.shape().clone();
    if a.format == OutFormat::Sglang {
        if target.is_some() {
            bail!("--target-bytes: sglang dumps are one file per workload and phase");
        }
        std::fs::create_dir_all(&a.out).with_context(|| format!("{}", a.out.display()))?;
        for c in gen.counts() {
            let phase = c.phase.map_or("all", |p| p.as_str());
            let name = format!(
                "{phase}_{}.json",
                c.workload.as_deref().unwrap_or("default")
            );
            let path = a.out.join(name.replace('/', "_"));
            std::fs::write(
                &path,
                sglang::render(&c, shape.num_layers, shape.num_experts),
            )
            .with_context(|| format!("{}", path.display()))?;
            println!("{}", path.display());
        }
        return Ok(());
    }
    let sink = Sink::create(a.format, &a.out, &shape)?;
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let requests = gen.config().requests;
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let written = AtomicU64::new(0);
    let failure = Mutex::new(None);
    let start = Instant::now();
    let pb = moeflow_worker::progress::bar(target.unwrap_or(requests as u64), "writing");
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let done_bytes = written.load(Ordering::Relaxed);
                let i = next.fetch_add(1, Ordering::Relaxed);
                let more = match target {
                    Some(t) => done_bytes < t,
                    None => i < requests,
                };
                if !more || failure.lock().map_or(true, |f| f.is_some()) {
                    break;
                }
                match sink.write(&gen.request(i)) {
                    Ok(b) => {
                        written.fetch_add(b, Ordering::Relaxed);
                        done.fetch_add(1, Ordering::Relaxed);
                        pb.inc(if target.is_some() { b } else { 1 });
                    }
                    Err(e) => {
                        if let Ok(mut f) = failure.lock() {
                            f.get_or_insert(e);
                        }
                        break;
                    }
                }
            });
        }
    });
    pb.finish_and_clear();
    if let Some(e) = failure.into_inner().ok().flatten() {
        return Err(e.context(format!("writing {}", a.out.display())));
    }
    sink.finish()?;
    println!(
        "wrote {} request(s), {:.1} MB, to {} in {:.1} s",
        done.load(Ordering::Relaxed),
        written.load(Ordering::Relaxed) as f64 / 1e6,
        a.out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn convert(a: ConvertArgs) -> anyhow::Result<()> {
    let srcs = sources::open_all(std::slice::from_ref(&a.source), &a.source_args)?;
    let shape = sources::common_shape(&srcs)?;
    if a.to == OutFormat::Sglang {
        // Counts of every item, per workload and phase.
        let (summaries, _, _, skipped) = sources::fold_all(
            &srcs,
            std::collections::BTreeMap::<String, moeflow_trace::LoadSummary>::new,
            |m, item| {
                let key = item.workload().unwrap_or("default").to_string();
                let s = m
                    .entry(key)
                    .or_insert_with(|| moeflow_trace::LoadSummary::new(shape.clone(), false));
                // Items were validated against this shape by the source.
                let _ = s.add(&item);
            },
            |total, part| {
                for (k, v) in part {
                    match total.get_mut(k) {
                        Some(t) => t.merge(v),
                        None => {
                            total.insert(k.clone(), v.clone());
                        }
                    }
                }
                Ok(())
            },
        )?;
        std::fs::create_dir_all(&a.out).with_context(|| format!("{}", a.out.display()))?;
        for (workload, s) in summaries {
            for (name, load) in [
                ("prefill", &s.prefill),
                ("decode", &s.decode),
                ("all", &s.unphased),
            ] {
                if load.is_empty() {
                    continue;
                }
                let mut c = load.to_counts(shape.num_layers, workload.clone(), None);
                c.workload = Some(workload.clone());
                let path = a
                    .out
                    .join(format!("{name}_{}.json", workload.replace('/', "_")));
                std::fs::write(
                    &path,
                    sglang::render(&c, shape.num_layers, shape.num_experts),
                )
                .with_context(|| format!("{}", path.display()))?;
                println!("{}", path.display());
            }
        }
        return exit_if_skipped(skipped);
    }
    let sink = Sink::create(a.to, &a.out, &shape)?;
    let (counts, items, bytes, mut skipped) = sources::fold_all(
        &srcs,
        || (0u64, Vec::<String>::new()),
        |acc, item| match item {
            TraceItem::Request(r) => match sink.write(&r) {
                Ok(b) => acc.0 += b,
                Err(e) => acc.1.push(format!("{}: {e:#}", r.id)),
            },
            TraceItem::Counts(c) => acc.1.push(format!(
                "{}: aggregate counts have no requests; convert them --to sglang",
                c.id
            )),
        },
        |t, p| {
            t.0 += p.0;
            t.1.extend(p.1.iter().cloned());
            Ok(())
        },
    )?;
    sink.finish()?;
    for e in &counts.1 {
        eprintln!("skipped {e}");
    }
    skipped += counts.1.len();
    println!(
        "converted {items} item(s), {:.1} MB in, {:.1} MB out, to {}",
        bytes as f64 / 1e6,
        counts.0 as f64 / 1e6,
        a.out.display()
    );
    exit_if_skipped(skipped)
}

fn info(a: InfoArgs) -> anyhow::Result<()> {
    let opts = a.source_args.options();
    let s =
        moeflow_trace::open(&a.source, &opts).with_context(|| format!("{}", a.source.display()))?;
    let out = serde_json::json!({
        "path": s.path(),
        "format": s.format().as_str(),
        "files": s.num_files(),
        "bytes": s.total_bytes(),
        "shape": s.shape(),
        "num_experts_from": format!("{:?}", s.num_experts_origin()),
        "top_k_from": format!("{:?}", s.top_k_origin()),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn fold(a: FoldArgs) -> anyhow::Result<()> {
    let m = moeflow_worker::config::ModelConfig::from_dir(&a.model)
        .with_context(|| format!("--model {}", a.model.display()))?
        .shape();
    let target = ModelShape {
        model: Some(a.model.display().to_string()),
        num_layers: m.num_layers,
        num_experts: m.num_experts,
        top_k: m.experts_per_token,
        moe_layers: m.moe_layers,
    };
    let srcs = sources::open_all(&a.sources, &a.source)?;
    let phase = a.phase.phase();
    let (folded, skipped) = sources::folded_counts(&srcs, phase, &target)?;
    std::fs::write(
        &a.out,
        sglang::render(&folded, target.num_layers, target.num_experts),
    )
    .with_context(|| format!("writing {}", a.out.display()))?;
    let stem = a
        .out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (labelled, _) = sglang::labels_from_stem(&stem);
    if labelled != phase {
        eprintln!(
            "note: {} will read as {} data (SGLang dumps carry their phase in the file name: prefill_*.json, decode_*.json)",
            a.out.display(),
            labelled.map_or("unphased", Phase::as_str)
        );
    }
    println!(
        "folded {} ({}) onto {} MoE layers of {} experts: {}",
        source_label(&a.sources),
        phase.map_or("all phases", Phase::as_str),
        target.moe_layers.len(),
        target.num_experts,
        a.out.display()
    );
    exit_if_skipped(skipped)
}

fn source_label(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("500m").unwrap(), 500 << 20);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert_eq!(parse_size("1.5k").unwrap(), 1536);
        assert!(parse_size("2X").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("G").is_err());
    }
}
