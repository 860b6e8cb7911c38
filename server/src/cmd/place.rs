//! `moeflow place`: placement plans from traces (`plan`), judged by trace replay (`eval`,
//! `compare`; see `place_plan`), and the plans of a running deployment, through the router's
//! `Admin` gRPC API: `apply` moves a running group to a plan (experts load in the background
//! while serving continues; the group switches between two steps); `show` prints the plan a
//! group runs.

use std::path::PathBuf;

use anyhow::Context;
use moeflow_placement::PlacementPlan;
use moeflow_proto::v1 as pb;
use moeflow_proto::v1::admin_client::AdminClient;

use super::{place_plan, place_profile};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: PlaceCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum PlaceCommand {
    /// Make a placement plan from traces with one planner.
    Plan(place_plan::PlanArgs),
    /// Replay traces against plans: balance, modelled MoE time, bytes between ranks.
    Eval(place_plan::EvalArgs),
    /// Plan with several planners from the same data and replay them side by side.
    Compare(place_plan::CompareArgs),
    /// Move a running group to a placement plan.
    Apply(ApplyArgs),
    /// Print the placement plan a running group uses (JSON).
    Show(ShowArgs),
    /// Measure this machine's device profile (FLOP/s, memory and link bandwidth) for
    /// `--profile FILE`.
    Profile(place_profile::ProfileArgs),
}

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// The plan (moeflow.placement/v1 JSON).
    #[arg(long)]
    pub plan: PathBuf,
    /// `prefill` or `decode`.
    #[arg(long)]
    pub group: String,
    /// gRPC address of `moeflow serve` / `moeflow router`.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// Permute each layer's rank lists to overlap the running plan most before applying, so
    /// the switch loads as few experts as it can; balance and cost stay the same (each
    /// layer's set of lists is unchanged). The plan that runs is then a relabelling of the
    /// file's (`place show` prints it).
    #[arg(long)]
    pub relabel: bool,
    /// With `--relabel`: ranks per node; lists are permuted only within a node, so what the
    /// plan put on different nodes (replicas, router groups) stays on different nodes.
    #[arg(long, requires = "relabel")]
    pub ranks_per_node: Option<usize>,
}

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    #[arg(long)]
    pub group: String,
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub addr: String,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        PlaceCommand::Plan(a) => place_plan::plan(a),
        PlaceCommand::Eval(a) => place_plan::eval(a),
        PlaceCommand::Compare(a) => place_plan::compare(a),
        PlaceCommand::Apply(a) => block_on(apply(a)),
        PlaceCommand::Show(s) => block_on(show(s)),
        PlaceCommand::Profile(a) => place_profile::profile(a),
    }
}

fn block_on<F: std::future::Future<Output = anyhow::Result<()>>>(f: F) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

async fn connect(addr: &str) -> anyhow::Result<AdminClient<tonic::transport::Channel>> {
    let addr = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    Ok(AdminClient::connect(addr.clone())
        .await
        .with_context(|| format!("reaching {addr}"))?
        .max_decoding_message_size(64 << 20))
}

async fn apply(a: ApplyArgs) -> anyhow::Result<()> {
    // Checked here too, so a malformed file fails before any network round trip; the workers
    // check it against the model and the group.
    let mut plan = PlacementPlan::from_file(&a.plan)
        .with_context(|| format!("--plan {}", a.plan.display()))?;
    let mut client = connect(&a.addr).await?;
    let mut relabelled = serde_json::Value::Null;
    if a.relabel {
        let running = running_plan(&mut client, &a.group).await?;
        let before = moeflow_placement::moved_experts(&running, &plan);
        plan = moeflow_placement::relabel(&plan, &running, a.ranks_per_node);
        let after = moeflow_placement::moved_experts(&running, &plan);
        relabelled =
            serde_json::json!({"experts_to_load_as_given": before, "experts_to_load": after});
    }
    let r = client
        .apply_plan(pb::ApplyPlanRequest {
            group: a.group.clone(),
            plan_json: plan.to_json_pretty(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))
        .with_context(|| format!("applying {} to group {}", a.plan.display(), a.group))?
        .into_inner();
    println!(
        "{}",
        serde_json::json!({
            "group": a.group,
            "old_version": format!("{:016x}", r.old_version),
            "new_version": format!("{:016x}", r.new_version),
            "experts_loaded": r.experts_loaded,
            "bytes_loaded": r.bytes_loaded,
            "experts_dropped": r.experts_dropped,
            "prepare_seconds": r.prepare_seconds,
            "commit_seconds": r.commit_seconds,
            "relabel": relabelled,
        })
    );
    Ok(())
}

async fn show(s: ShowArgs) -> anyhow::Result<()> {
    let mut client = connect(&s.addr).await?;
    println!("{}", plan_json(&mut client, &s.group).await?);
    Ok(())
}

/// The JSON of the plan `group` runs now.
async fn plan_json(
    client: &mut AdminClient<tonic::transport::Channel>,
    group: &str,
) -> anyhow::Result<String> {
    Ok(client
        .get_plan(pb::GroupPlanRequest {
            group: group.to_string(),
        })
        .await
        .map_err(|st| anyhow::anyhow!("{}", st.message()))
        .with_context(|| format!("reading the plan of group {group}"))?
        .into_inner()
        .plan_json)
}

async fn running_plan(
    client: &mut AdminClient<tonic::transport::Channel>,
    group: &str,
) -> anyhow::Result<PlacementPlan> {
    let json = plan_json(client, group).await?;
    serde_json::from_str(&json).with_context(|| format!("the running plan of group {group}"))
}
