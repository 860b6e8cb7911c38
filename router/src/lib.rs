//! Scheduling library for moeflow: the router's view of worker groups (and, as it grows,
//! admission, continuous batching and prefill/decode placement).

pub mod admin;
pub mod api;
pub mod group;
pub mod rebalance;
pub mod registry;
pub mod scheduler;
pub mod stats;
pub mod trace;

pub use group::{GroupClient, GroupError, WorkerGroup};
pub use scheduler::{Scheduler, SchedulerConfig};
