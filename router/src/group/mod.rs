//! The router's view of a worker group: the operations the scheduler needs from one
//! ([`GroupClient`]) and its implementation over gRPC ([`WorkerGroup`]).
//!
//! Every rank of a group must run every step (ranks without sequences run an empty batch),
//! because their forward passes meet at each MoE layer's all-to-all. A step therefore goes to
//! all ranks at once and succeeds only if all of them succeed; any failure (a rank that died,
//! a peer the others lost, a deadline passed) fails the whole step with an error that names
//! the rank, so callers end the affected requests instead of waiting.

mod client;
mod error;
#[cfg(test)]
pub(crate) mod fake;
mod grpc;

pub use client::GroupClient;
pub use error::GroupError;
pub use grpc::WorkerGroup;
