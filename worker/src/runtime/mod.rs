//! The worker process's runtime: an [`Engine`] thread that owns the model, the KV cache, the
//! dispatch and the per-sequence samplers, and the gRPC `Worker` service through which a
//! coordinator drives it one step at a time.
//!
//! The engine runs on its own OS thread because a forward pass is blocking CPU work and, in a
//! group, blocking communication; the async service only forwards commands and awaits replies.

mod engine;
mod replan;
mod service;

pub use engine::{
    ChunkInput, CommitOutcome, DispatchStats, Engine, EngineHandle, EngineStatus, SeqOutput,
    StepInput,
};
pub use replan::{check_plan, drops, gains, stage, ReplanContext, ReplanError, StagedPlan};
pub use service::WorkerService;
