//! `moeflow place plan|eval|compare`: placement plans made from traces and judged by
//! replaying traces, offline (no running deployment needed).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use moeflow_placement::eval::{Compare, Comparison, DeviceProfile, EvalOptions, PROFILE_NAMES};
use moeflow_placement::planner::{self, PlanInput};
use moeflow_placement::{CostModel, ExpertShape};
use moeflow_placement::{PlacementPlan, PlanTarget};
use moeflow_trace::{LoadSummary, ModelShape, Phase, Source};
use moeflow_worker::config::ModelConfig;

use super::sources::{self, exit_if_skipped, SourceArgs};

/// Which phase of a source to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PhaseArg {
    Prefill,
    Decode,
    All,
}

impl PhaseArg {
    pub fn phase(self) -> Option<Phase> {
        match self {
            PhaseArg::Prefill => Some(Phase::Prefill),
            PhaseArg::Decode => Some(Phase::Decode),
            PhaseArg::All => None,
        }
    }
}

/// The group a plan is for and how its devices and experts cost.
#[derive(Debug, Clone, clap::Args)]
pub struct GroupArgs {
    /// Ranks (devices) of the group.
    #[arg(long)]
    pub ranks: usize,
    /// Extra expert slots per rank for replicas of hot experts.
    #[arg(long, default_value_t = 0)]
    pub redundant: usize,
    /// Ranks per node (a topology: replicas spread over nodes, cross-node bytes counted).
    #[arg(long)]
    pub ranks_per_node: Option<usize>,
    /// Expert groups of the router (DeepSeek-V3: 8), for EPLB's hierarchical mode.
    #[arg(long, default_value_t = 1)]
    pub groups: usize,
    /// prefill-aware and traffic-aware leave EPLB's layout of a layer only for one that is
    /// better on average under the load noise and in at least this share of the perturbed
    /// loads (0 to 1; 0: on average only).
    #[arg(long, default_value_t = planner::DEFAULT_MIN_WIN_SHARE)]
    pub min_win_share: f64,
    #[command(flatten)]
    pub cost: CostArgs,
}

/// The device profile and expert dimensions of the modelled times.
#[derive(Debug, Clone, clap::Args)]
pub struct CostArgs {
    /// Device profile for modelled times: a built-in (h100, cpu) or a JSON file with the
    /// fields name, flops, mem_bw, intra_node_bw and inter_node_bw (FLOP/s and bytes/s), for
    /// other hardware or numbers measured on one's own.
    #[arg(long, default_value = "h100")]
    pub profile: String,
    /// Hidden size of the model (activation width; default DeepSeek-V3's 7168).
    #[arg(long, default_value_t = 7168)]
    pub hidden_size: usize,
    /// Intermediate size of one routed expert (default DeepSeek-V3's 2048).
    #[arg(long, default_value_t = 2048)]
    pub intermediate_size: usize,
    /// Bytes per expert weight (2 for BF16, 1 for FP8) and per activation element sent.
    #[arg(long, default_value_t = 2)]
    pub bytes_per_elem: usize,
    /// Tokens the whole group processes per step, for the modelled times (cold experts then
    /// sit on the memory-bound floor, as in serving).
    #[arg(long)]
    pub tokens_per_step: Option<f64>,
}

impl CostArgs {
    fn profile(&self) -> anyhow::Result<DeviceProfile> {
        if let Some(p) = DeviceProfile::by_name(&self.profile) {
            return Ok(p);
        }
        let path = std::path::Path::new(&self.profile);
        if !path.is_file() {
            anyhow::bail!(
                "--profile {}: neither a built-in profile ({}) nor a JSON file",
                self.profile,
                PROFILE_NAMES.join(", ")
            );
        }
        let json =
            std::fs::read_to_string(path).with_context(|| format!("--profile {}", self.profile))?;
        DeviceProfile::from_json(&json).with_context(|| format!("--profile {}", self.profile))
    }

    fn expert(&self) -> ExpertShape {
        ExpertShape {
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            weight_bytes: self.bytes_per_elem as f64,
        }
    }

    fn cost(&self) -> anyhow::Result<CostModel> {
        Ok(CostModel {
            expert: self.expert(),
            profile: self.profile()?,
            tokens_per_step: self.tokens_per_step,
        })
    }

    fn eval_options(&self, ranks_per_node: Option<usize>, phase: PhaseArg) -> EvalOptions {
        EvalOptions {
            expert: self.expert(),
            bytes_per_elem: self.bytes_per_elem,
            ranks_per_node,
            phase: phase.phase(),
            tokens_per_step: self.tokens_per_step,
            ..EvalOptions::default()
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// Planner: contiguous, round-robin, eplb, prefill-aware (-remap, -dup), traffic-aware.
    #[arg(long)]
    pub algo: String,
    #[command(flatten)]
    pub group: GroupArgs,
    /// Trace sources to plan from (any format `moeflow trace` reads).
    #[arg(long = "from", required = true, num_args = 1..)]
    pub from: Vec<PathBuf>,
    /// Which phase of the sources to plan from (decode placement from prefill data is the
    /// paper's point).
    #[arg(long, value_enum, default_value = "prefill")]
    pub phase: PhaseArg,
    /// The checkpoint the plan is for: its expert count and MoE layers must match the trace.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Where to write the plan (moeflow.placement/v1 JSON).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub source: SourceArgs,
}

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Plans to replay (moeflow.placement/v1 JSON); several are compared side by side.
    #[arg(long = "plan", required = true, num_args = 1..)]
    pub plans: Vec<PathBuf>,
    /// Trace sources to replay.
    #[arg(long = "on", required = true, num_args = 1..)]
    pub on: Vec<PathBuf>,
    #[arg(long, value_enum, default_value = "decode")]
    pub phase: PhaseArg,
    #[arg(long)]
    pub ranks_per_node: Option<usize>,
    #[command(flatten)]
    pub cost: CostArgs,
    /// Folder for eval.json and the plot (the table goes to stdout either way).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub source: SourceArgs,
}

#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// Planners, comma-separated (default: all of them).
    #[arg(long, value_delimiter = ',')]
    pub algos: Vec<String>,
    #[command(flatten)]
    pub group: GroupArgs,
    /// Trace sources to plan from.
    #[arg(long = "from", required = true, num_args = 1..)]
    pub from: Vec<PathBuf>,
    #[arg(long, value_enum, default_value = "prefill")]
    pub plan_phase: PhaseArg,
    /// Trace sources to evaluate on (default: the --from sources).
    #[arg(long = "on", num_args = 1..)]
    pub on: Vec<PathBuf>,
    #[arg(long, value_enum, default_value = "decode")]
    pub eval_phase: PhaseArg,
    /// Also plan with eplb and prefill-aware on the evaluation data itself: what a plan that
    /// knew those loads in advance reaches.
    #[arg(long)]
    pub oracle: bool,
    /// Folder for comparison.json, the plans and the plot.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub source: SourceArgs,
}

/// Loads of every source, with co-activation pairs when the data is per-token.
fn load_summary(srcs: &[Source], shape: &ModelShape) -> anyhow::Result<(LoadSummary, usize)> {
    let pairs = srcs
        .iter()
        .any(|s| s.format() != moeflow_trace::Format::SglangCounts);
    sources::load_summary(srcs, shape, pairs)
}

fn target_of(shape: &ModelShape, model: Option<&Path>) -> anyhow::Result<PlanTarget> {
    let target = PlanTarget {
        num_experts: shape.num_experts,
        moe_layers: shape.moe_layers.clone(),
    };
    if let Some(dir) = model {
        let m = ModelConfig::from_dir(dir)
            .with_context(|| format!("--model {}", dir.display()))?
            .shape();
        if m.num_experts != target.num_experts {
            bail!(
                "the trace has {} experts per layer, the model at {} has {}",
                target.num_experts,
                dir.display(),
                m.num_experts
            );
        }
        if m.moe_layers != target.moe_layers {
            bail!(
                "the trace's MoE layers {:?} are not the model's {:?} ({})",
                target.moe_layers,
                m.moe_layers,
                dir.display()
            );
        }
    }
    Ok(target)
}

fn plan_input(
    group: &GroupArgs,
    shape: &ModelShape,
    load: &moeflow_trace::PhaseLoad,
    target: PlanTarget,
    source: String,
) -> anyhow::Result<PlanInput> {
    if load.is_empty() {
        bail!("the planning data has no selections in that phase ({source})");
    }
    Ok(
        PlanInput::from_load(target, load, group.ranks, group.redundant)?
            .with_nodes(group.ranks_per_node)
            .with_groups(group.groups)
            .with_min_win_share(group.min_win_share)
            .with_top_k(shape.top_k.max(1))
            .with_cost(group.cost.cost()?)
            .with_source(shape.model.clone(), Some(source)),
    )
}

fn source_label(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

pub fn plan(a: PlanArgs) -> anyhow::Result<()> {
    let planner = planner::by_name(&a.algo)?;
    let srcs = sources::open_all(&a.from, &a.source)?;
    let shape = sources::common_shape(&srcs)?;
    let target = target_of(&shape, a.model.as_deref())?;
    let (summary, skipped) = load_summary(&srcs, &shape)?;
    let load = summary.select(a.phase.phase());
    let input = plan_input(&a.group, &shape, &load, target, source_label(&a.from))?;
    let plan = planner.plan(&input)?;
    std::fs::write(&a.out, plan.to_json_pretty())
        .with_context(|| format!("writing {}", a.out.display()))?;
    println!(
        "{} plan for {} ranks ({} slots per rank) from {} written to {}",
        a.algo,
        a.group.ranks,
        input.slots_per_rank(),
        a.phase.phase().map_or("all", Phase::as_str),
        a.out.display()
    );
    exit_if_skipped(skipped)
}

/// Replays the evaluation sources against prepared evaluators and writes the outputs.
fn replay_and_report(
    mut cmp: Compare,
    srcs: &[Source],
    out: Option<&Path>,
) -> anyhow::Result<(Comparison, usize)> {
    let proto = cmp.clone();
    let (acc, _, _, skipped) = sources::fold_all(
        srcs,
        || (proto.clone(), Vec::<String>::new()),
        |(c, errs), item| {
            if let Err(e) = c.add(&item) {
                errs.push(format!("{}: {e}", item.id()));
            }
        },
        |t, p| {
            t.0.merge(&p.0)?;
            t.1.extend(p.1.iter().cloned());
            Ok(())
        },
    )?;
    for e in &acc.1 {
        eprintln!("skipped {e}");
    }
    cmp = acc.0;
    let result = cmp.finish();
    println!("{}", result.table());
    if let Some(dir) = out {
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
        let json = dir.join("comparison.json");
        std::fs::write(&json, serde_json::to_string_pretty(&result)?)
            .with_context(|| format!("{}", json.display()))?;
        let svg = dir.join("busiest_over_mean.svg");
        moeflow_placement::eval::plot::busiest_over_mean(&result, &svg)
            .with_context(|| format!("{}", svg.display()))?;
        println!("wrote {} and {}", json.display(), svg.display());
    }
    Ok((result, skipped + acc.1.len()))
}

pub fn eval(a: EvalArgs) -> anyhow::Result<()> {
    let srcs = sources::open_all(&a.on, &a.source)?;
    let shape = sources::common_shape(&srcs)?;
    let mut plans = Vec::with_capacity(a.plans.len());
    for p in &a.plans {
        let plan =
            PlacementPlan::from_file(p).with_context(|| format!("--plan {}", p.display()))?;
        let name = plan
            .algorithm
            .clone()
            .unwrap_or_else(|| p.display().to_string());
        plans.push((name, plan));
    }
    let cmp = Compare::from_plans(
        plans,
        &shape,
        &a.cost.profile()?,
        &a.cost.eval_options(a.ranks_per_node, a.phase),
    )?;
    let (_, skipped) = replay_and_report(cmp, &srcs, a.out.as_deref())?;
    exit_if_skipped(skipped)
}

pub fn compare(a: CompareArgs) -> anyhow::Result<()> {
    let names: Vec<String> = if a.algos.is_empty() {
        planner::NAMES.iter().map(|s| s.to_string()).collect()
    } else {
        a.algos.clone()
    };
    let from = sources::open_all(&a.from, &a.source)?;
    let on_paths = if a.on.is_empty() { &a.from } else { &a.on };
    let on = sources::open_all(on_paths, &a.source)?;
    let shape = sources::common_shape(&from)?;
    let eval_shape = sources::common_shape(&on)?;
    if eval_shape.num_experts != shape.num_experts || eval_shape.moe_layers != shape.moe_layers {
        bail!("--from and --on are traces of different models");
    }
    let target = target_of(&shape, None)?;
    let (summary, mut skipped) = load_summary(&from, &shape)?;
    let input = plan_input(
        &a.group,
        &shape,
        &summary.select(a.plan_phase.phase()),
        target.clone(),
        source_label(&a.from),
    )?;
    let mut plans = Vec::new();
    for name in &names {
        let plan = planner::by_name(name)?
            .plan(&input)
            .with_context(|| format!("planner {name}"))?;
        plans.push((name.clone(), plan));
    }
    if a.oracle {
        let (eval_summary, s) = load_summary(&on, &shape)?;
        skipped += s;
        // It knows the loads it is judged on: no noise to be robust against.
        let oracle_input = plan_input(
            &a.group,
            &shape,
            &eval_summary.select(a.eval_phase.phase()),
            target,
            source_label(on_paths),
        )?
        .with_load_noise(planner::LoadNoise::NONE);
        for name in ["eplb", "prefill-aware"] {
            let plan = planner::by_name(name)?.plan(&oracle_input)?;
            plans.push((format!("{name} (oracle)"), plan));
        }
    }
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
        for (name, plan) in &plans {
            let file = dir.join(format!("plan-{}.json", name.replace([' ', '(', ')'], "")));
            std::fs::write(&file, plan.to_json_pretty())
                .with_context(|| format!("{}", file.display()))?;
        }
    }
    let cmp = Compare::from_plans(
        plans,
        &shape,
        &a.group.cost.profile()?,
        &a.group
            .cost
            .eval_options(a.group.ranks_per_node, a.eval_phase),
    )?;
    let (_, s) = replay_and_report(cmp, &on, a.out.as_deref())?;
    exit_if_skipped(skipped + s)
}
