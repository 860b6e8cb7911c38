//! Scheduling library for moeflow: the router's view of worker groups (and, as it grows,
//! admission, continuous batching and prefill/decode placement).
//!
//! The scheduler implements `moeflow_api::Backend`, the contract the front ends call; the
//! contract lives in its own crate so that the front ends do not depend on this one.

pub mod admin;
pub mod group;
pub mod rebalance;
pub mod registry;
pub mod scheduler;
pub mod stats;
pub mod trace;

/// The front ends' contract under the crate-local path the scheduler's modules import it by.
use moeflow_api as api;

pub use group::{GroupError, WorkerGroup};
pub use scheduler::{Scheduler, SchedulerConfig};
