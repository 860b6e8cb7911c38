//! Generates the gRPC code from `proto/*.proto` with a vendored protoc, so that no system
//! protoc is needed on developer machines or in CI.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let protos = [
        "proto/moeflow/v1/generate.proto",
        "proto/moeflow/v1/group.proto",
        "proto/moeflow/v1/worker.proto",
        "proto/moeflow/v1/registry.proto",
        "proto/moeflow/v1/admin.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure().compile_protos(&protos, &["proto"])?;
    Ok(())
}
