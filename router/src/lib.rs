//! Scheduling library for moeflow: the router's view of worker groups (and, as it grows,
//! admission, continuous batching and prefill/decode placement).

pub mod group;

pub use group::{GroupError, WorkerGroup};
