//! `moeflow place`: placement plans from traces (`plan`), judged by trace replay (`eval`,
//! `compare`).

use super::place_plan;

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
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        PlaceCommand::Plan(a) => place_plan::plan(a),
        PlaceCommand::Eval(a) => place_plan::eval(a),
        PlaceCommand::Compare(a) => place_plan::compare(a),
    }
}
