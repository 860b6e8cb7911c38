//! Scheduling library for moeflow: everything between the front ends and the worker groups.
//!
//! A deployment has a decode group and, when disaggregated, a prefill group. The
//! [`Scheduler`] admits requests, batches them continuously on both groups and moves each
//! prefilled sequence's KV cache to decode; it reaches a group through [`GroupClient`], which
//! [`WorkerGroup`] implements over gRPC. Around it: worker statistics (`stats`), expert-trace
//! recording (`trace`), live re-placement (`rebalance`, `admin`) and the registry where
//! separately started workers join their group (`registry`). The scheduler implements
//! `moeflow_api::Backend`, the contract the front ends call, which lives in its own crate so
//! that the front ends do not depend on this one.

pub mod admin;
pub mod group;
pub mod rebalance;
pub mod registry;
pub mod scheduler;
pub mod stats;
pub mod trace;

pub use group::{GroupClient, GroupError, WorkerGroup};
pub use scheduler::{Scheduler, SchedulerConfig};
