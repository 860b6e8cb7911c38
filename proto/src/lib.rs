//! moeflow's gRPC definitions. Every `.proto` file lives under `proto/proto/`; this crate is
//! the one place their generated Rust code comes from.

/// The public API: generation, abort, health, model info and per-worker loads.
pub mod v1 {
    tonic::include_proto!("moeflow.v1");
}
