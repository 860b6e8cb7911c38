//! `moeflow`: one binary for every role (model tools, single-process generation, and later the
//! router, workers and the local launcher), so a deployment ships one artifact.

mod cmd;
mod launch;
mod serving;

use clap::{Parser, Subcommand};

/// moeflow: a serving runtime for large Mixture-of-Experts models.
#[derive(Debug, Parser)]
#[command(name = "moeflow", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a deterministic random-weight checkpoint in the Hugging Face layout.
    InitModel(cmd::init_model::Args),
    /// Generate a completion in this process (no router, no workers).
    Generate(cmd::generate::Args),
    /// Run one rank of an expert-parallel worker group.
    Worker(cmd::worker::Args),
    /// Run prompts on a local expert-parallel worker group of separate processes.
    Group(cmd::group::Args),
    /// Serve the OpenAI-compatible HTTP and gRPC APIs over local worker groups.
    Serve(cmd::serve::Args),
    /// The router alone; workers started elsewhere join with `moeflow worker --router`.
    Router(cmd::router::Args),
    /// Benchmark any OpenAI-compatible endpoint.
    Bench(cmd::bench::Args),
    /// Expert-selection traces: analyse, synthesise, convert.
    Trace(cmd::trace::Args),
    /// Expert placement plans: make them from traces, evaluate them by replay, apply them to
    /// a running group.
    Place(cmd::place::Args),
}

fn main() -> anyhow::Result<()> {
    init_tracing();
    let cli = Cli::parse();
    match cli.command {
        Command::InitModel(args) => cmd::init_model::run(args),
        Command::Generate(args) => cmd::generate::run(args),
        Command::Worker(args) => cmd::worker::run(args),
        Command::Group(args) => cmd::group::run(args),
        Command::Serve(args) => cmd::serve::run(args),
        Command::Router(args) => cmd::router::run(args),
        Command::Bench(args) => cmd::bench::run(args),
        Command::Trace(args) => cmd::trace::run(args),
        Command::Place(args) => cmd::place::run(args),
    }
}

/// Logs go to stderr so that stdout stays machine-readable (`generate --json`).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MOEFLOW_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
