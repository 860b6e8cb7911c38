//! `moeflow router`: the router alone, for deployments whose workers run elsewhere (other
//! hosts, Kubernetes pods). It hosts a bootstrap coordinator per group and a registry;
//! `moeflow worker --router URL --role prefill|decode` finds its group there, joins it and
//! registers its control address. Once every rank of both groups has registered, the router
//! serves the HTTP and gRPC APIs as `moeflow serve` does.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Context};
use moeflow_comm::bootstrap::{Coordinator, CoordinatorConfig};
use moeflow_comm::GroupIdentity;
use moeflow_placement::{PlacementPlan, PlanTarget};
use moeflow_router::registry::{GroupSlot, Registry};
use moeflow_router::WorkerGroup;
use moeflow_worker::config::{model_fingerprint, ModelConfig};

use crate::serving::{
    model_facts, serve_until_signal, start_trace_recorder, DeploymentArgs, ServingArgs,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    layout: DeploymentArgs,
    /// Address the registry and the group coordinators bind.
    #[arg(long, default_value = "127.0.0.1")]
    bind_host: String,
    /// Host the workers use to reach the coordinators (this machine's address on their
    /// network).
    #[arg(long, default_value = "127.0.0.1")]
    advertise_host: String,
    /// Port of the registry workers contact (`moeflow worker --router`).
    #[arg(long, default_value_t = 50052)]
    registry_port: u16,
    #[command(flatten)]
    serving: ServingArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    args.layout.check()?;
    let model = args.layout.model_dir()?;
    let shape = ModelConfig::from_dir(&model)?.shape();
    let target = PlanTarget {
        num_experts: shape.num_experts,
        moe_layers: shape.moe_layers.clone(),
    };
    let fingerprint = model_fingerprint(&model)?;
    let (info, tokenizer) = model_facts(&model, args.serving.served_model_name.as_deref())?;
    let trace = start_trace_recorder(&args.serving, &model, &info.id)?;
    let _metrics = moeflow_frontend::install_recorder();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut roles = vec![(
        "decode",
        args.layout.decode_workers,
        args.layout.decode_placement.clone(),
    )];
    if args.layout.prefill_workers > 0 {
        roles.push((
            "prefill",
            args.layout.prefill_workers,
            args.layout.prefill_placement.clone(),
        ));
    }
    let mut slots = HashMap::new();
    for (role, ranks, plan_path) in &roles {
        let plan = match plan_path {
            Some(p) => PlacementPlan::from_file(p)
                .with_context(|| format!("{role} plan {}", p.display()))?,
            None => PlacementPlan::contiguous(&target, *ranks)?,
        };
        plan.check_target(&target)
            .with_context(|| format!("the {role} placement plan does not fit the model"))?;
        if plan.num_ranks != *ranks {
            bail!(
                "--{role}-workers is {ranks} but its plan has {} ranks",
                plan.num_ranks
            );
        }
        let group_id = format!("{role}-{}", std::process::id());
        let identity = GroupIdentity {
            group_id: group_id.clone(),
            model_fingerprint: fingerprint.clone(),
            plan_version: plan.fingerprint(),
        };
        let coordinator = Coordinator::new(CoordinatorConfig::new(*ranks, identity))?;
        let listener = rt.block_on(tokio::net::TcpListener::bind((args.bind_host.as_str(), 0)))?;
        let port = listener.local_addr()?.port();
        rt.spawn(coordinator.serve(listener, std::future::pending()));
        slots.insert(
            role.to_string(),
            GroupSlot {
                coordinator: format!("http://{}:{port}", args.advertise_host),
                world_size: *ranks,
                plan_json: plan.to_json_pretty(),
                group_id,
            },
        );
    }
    let registry = Registry::new(slots);
    let reg_listener = rt
        .block_on(tokio::net::TcpListener::bind((
            args.bind_host.as_str(),
            args.registry_port,
        )))
        .with_context(|| {
            format!(
                "binding the registry on {}:{}",
                args.bind_host, args.registry_port
            )
        })?;
    let reg_addr = reg_listener.local_addr()?;
    rt.spawn(
        tonic::transport::Server::builder()
            .add_service(registry.service())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(reg_listener)),
    );
    println!(
        "moeflow router waiting for {} prefill and {} decode workers (moeflow worker --router http://{}:{} --role ...)",
        args.layout.prefill_workers,
        args.layout.decode_workers,
        args.advertise_host,
        reg_addr.port()
    );
    rt.block_on(async {
        let decode = WorkerGroup::connect(
            registry.wait_group("decode").await,
            Duration::from_secs(120),
        )
        .await?;
        let prefill = if args.layout.prefill_workers > 0 {
            Some(
                WorkerGroup::connect(
                    registry.wait_group("prefill").await,
                    Duration::from_secs(120),
                )
                .await?,
            )
        } else {
            None
        };
        serve_until_signal(prefill, decode, info, tokenizer, &args.serving, trace).await
    })
}
