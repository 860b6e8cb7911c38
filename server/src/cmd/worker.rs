//! `moeflow worker`: one rank of a worker group, as its own process.
//!
//! It joins the group's coordinator (which assigns the rank and tells it every peer's
//! address), loads the dense weights and exactly the routed experts its placement plan gives
//! its rank, connects to its peers, and then serves the `Worker` gRPC API through which the
//! coordinator drives it step by step. On start-up it prints one line
//! `MOEFLOW_WORKER_READY rank=R world_size=N [leader=ADDR] control=HOST:PORT` on stdout, so a
//! launcher can find it.
//!
//! In a Kubernetes LeaderWorkerSet pod it reads the group's position from the environment the
//! LWS controller injects: `LWS_WORKER_INDEX` is the rank it asks for, `LWS_GROUP_SIZE` must
//! equal the size of the group it joins, and `LWS_LEADER_ADDRESS` (the pod of index 0) is
//! reported. Groups form through the router's registry (`--router`), which hosts one
//! coordinator per group, not through the leader pod: so a rank's pod index is its rank, and
//! a router configured for another group size is an error at start-up, not a hang.

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use moeflow_comm::bootstrap::{join_blocking, JoinRequest};
use moeflow_comm::{GroupIdentity, TcpComm, TcpConfig};
use moeflow_placement::{PlacementPlan, PlanTarget};
use moeflow_proto::v1::worker_server::WorkerServer;
use moeflow_worker::config::{model_fingerprint, ModelConfig};
use moeflow_worker::group::EpDispatch;
use moeflow_worker::model::{LoadOptions, Transformer};
use moeflow_worker::moe::RouteReplay;
use moeflow_worker::runtime::{Engine, EngineHandle, ReplanContext, WorkerService};

use super::device::DeviceArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Checkpoint directory (Hugging Face layout).
    #[arg(long)]
    pub model: PathBuf,
    /// gRPC URL of the group's coordinator (as `moeflow group` starts workers).
    #[arg(long, required_unless_present = "router")]
    pub coordinator: Option<String>,
    /// gRPC URL of a `moeflow router`'s registry: the worker asks it for its group's
    /// coordinator and plan, and registers its control address there.
    #[arg(long, conflicts_with = "coordinator", requires = "role")]
    pub router: Option<String>,
    /// The group to join through `--router`: `prefill` or `decode`.
    #[arg(long)]
    pub role: Option<String>,
    /// Host the router uses to reach this worker's control API (with `--router`).
    #[arg(long, default_value = "127.0.0.1")]
    pub advertise_host: String,
    /// Placement plan (moeflow.placement/v1). Default: contiguous over --world-size ranks.
    #[arg(long)]
    pub plan: Option<PathBuf>,
    /// Group size, needed only without --plan. Kubernetes LeaderWorkerSet: LWS_GROUP_SIZE.
    #[arg(long, env = "LWS_GROUP_SIZE")]
    pub world_size: Option<usize>,
    /// A fixed rank instead of the next free one. LeaderWorkerSet: LWS_WORKER_INDEX.
    #[arg(long, env = "LWS_WORKER_INDEX")]
    pub rank: Option<usize>,
    /// Address of the group's rank-0 pod. LeaderWorkerSet: LWS_LEADER_ADDRESS. Reported in the
    /// log and the ready line so a rank can be tied to its LWS group; formation itself goes
    /// through the router's registry (or --coordinator).
    #[arg(long, env = "LWS_LEADER_ADDRESS")]
    pub leader_address: Option<String>,
    /// Group id every rank must share (two groups on one host never cross-connect).
    #[arg(long, default_value = "")]
    pub group_id: String,
    /// Address the activation (comm) listener binds; its bound address is advertised.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub comm_listen: String,
    /// Address the control gRPC server binds.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub control_listen: String,
    /// A peer silent for this long is declared dead and the step fails (milliseconds).
    #[arg(long, default_value_t = 3000)]
    pub peer_timeout_ms: u64,
    /// Activation transport between ranks: `tcp` (default, CPUs, across hosts) or `nccl`
    /// (GPUs; needs a build with the `nccl` feature and libnccl at run time).
    #[arg(long, default_value = "tcp")]
    pub comm: String,
    /// CUDA device ordinal of this rank for `--comm nccl`.
    #[arg(long, default_value_t = 0)]
    pub nccl_device: usize,
    /// Exit when standard input closes: set by launchers that keep the write end, so a
    /// worker never outlives the process that started it.
    #[arg(long)]
    pub exit_on_stdin_eof: bool,
    /// KV cache capacity in blocks of 16 tokens (allocated as used).
    #[arg(long, default_value_t = 8192)]
    pub kv_blocks: usize,
    /// BENCHMARKING ONLY: the gates select experts by sampling an expert-count distribution
    /// instead of by their scores, to show the load skew of real traffic on a small model.
    /// Any trace source `moeflow trace` reads (an SGLang `logical_count` dump, a JSONL log,
    /// a paper tree, a binary trace), all phases merged and folded onto this model (`moeflow
    /// trace fold`'s rules). Outputs are then meaningless.
    #[arg(long)]
    pub route_replay: Option<PathBuf>,
    /// Seed of `--route-replay`'s draws (every rank of a group must use the same).
    #[arg(long, default_value_t = 0)]
    pub route_replay_seed: u64,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.exit_on_stdin_eof {
        std::thread::spawn(|| {
            use std::io::Read;
            let mut buf = [0u8; 64];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
            tracing::warn!("the launcher went away (stdin closed); exiting");
            std::process::exit(1);
        });
    }
    let (device, dtype) = args.device.resolve()?;
    let config = ModelConfig::from_dir(&args.model)?;
    let shape = config.shape();
    let target = PlanTarget {
        num_experts: shape.num_experts,
        moe_layers: shape.moe_layers.clone(),
    };
    // Through a router: ask it for the group's coordinator, plan and id.
    let discovered = match (&args.router, &args.role) {
        (Some(router), Some(role)) => Some(discover(router, role)?),
        _ => None,
    };
    let plan_source = match (&discovered, &args.plan, &args.role) {
        (Some(_), _, Some(role)) => format!("the router's {role} group"),
        (None, Some(p), _) => format!("the plan {}", p.display()),
        _ => "the group".to_string(),
    };
    let plan = match (&discovered, &args.plan, args.world_size) {
        (Some(d), _, _) => serde_json::from_str::<PlacementPlan>(&d.plan_json)
            .context("the router's placement plan")
            .and_then(|p| {
                p.validate()
                    .map(|_| p)
                    .context("the router's placement plan")
            })?,
        (None, Some(p), _) => {
            PlacementPlan::from_file(p).with_context(|| format!("plan {}", p.display()))?
        }
        (None, None, Some(n)) => PlacementPlan::contiguous(&target, n)?,
        (None, None, None) => bail!("either --plan or --world-size (LWS_GROUP_SIZE) is required"),
    };
    let coordinator = match (&discovered, &args.coordinator) {
        (Some(d), _) => d.coordinator.clone(),
        (None, Some(c)) => c.clone(),
        (None, None) => bail!("either --coordinator or --router is required"),
    };
    let group_id = discovered
        .as_ref()
        .map_or_else(|| args.group_id.clone(), |d| d.group_id.clone());
    plan.check_target(&target)
        .context("the placement plan does not fit the model")?;
    check_position(args.world_size, args.rank, plan.num_ranks, &plan_source)?;
    let identity = GroupIdentity {
        group_id,
        model_fingerprint: model_fingerprint(&args.model)?,
        plan_version: plan.fingerprint(),
    };
    let listener = TcpListener::bind(&args.comm_listen)
        .with_context(|| format!("binding {}", args.comm_listen))?;
    let address = listener.local_addr()?.to_string();
    tracing::info!(
        %address,
        coordinator = %coordinator,
        requested_rank = ?args.rank,
        leader = args.leader_address.as_deref().unwrap_or("-"),
        "joining group"
    );
    let membership = join_blocking(
        &coordinator,
        JoinRequest {
            address,
            requested_rank: args.rank,
            identity: identity.clone(),
            want_nccl_id: args.comm == "nccl",
        },
        Duration::from_secs(60),
    )?;
    let rank = membership.rank;
    if membership.world_size != plan.num_ranks {
        bail!(
            "the group has {} ranks, the plan {}",
            membership.world_size,
            plan.num_ranks
        );
    }
    tracing::info!(
        rank,
        world_size = membership.world_size,
        leader = args.leader_address.as_deref().unwrap_or("-"),
        "joined; loading weights"
    );
    let world_size = membership.world_size;
    let leader = args
        .leader_address
        .as_deref()
        .map(|l| format!(" leader={l}"))
        .unwrap_or_default();
    let filter = |layer: usize, e: u32| plan.hosts(layer, rank, e);
    let mut model = Transformer::load(
        &args.model,
        LoadOptions {
            dtype,
            device: &device,
            experts: Some(&filter),
        },
    )?;
    if let Some(src) = &args.route_replay {
        let opts = moeflow_trace::ReadOptions {
            threads: 1,
            progress: false,
            ..moeflow_trace::ReadOptions::default()
        };
        let source = moeflow_trace::open(src, &opts)
            .with_context(|| format!("--route-replay {}", src.display()))?;
        let target = moeflow_trace::ModelShape {
            model: None,
            num_layers: shape.num_layers,
            num_experts: shape.num_experts,
            top_k: shape.experts_per_token,
            moe_layers: shape.moe_layers.clone(),
        };
        let (counts, skipped) =
            super::sources::folded_counts(std::slice::from_ref(&source), None, &target)
                .with_context(|| format!("--route-replay {}", src.display()))?;
        if skipped > 0 {
            bail!(
                "--route-replay {}: {skipped} file(s) skipped (see above)",
                src.display()
            );
        }
        let replay = RouteReplay::new(&counts, shape.experts_per_token, args.route_replay_seed)
            .with_context(|| format!("--route-replay {}", src.display()))?;
        tracing::warn!(source = %src.display(), "route replay is on: gates follow the recorded distribution (benchmarking only)");
        model.set_route_replay(Some(std::sync::Arc::new(replay)));
    }
    let kv = model.kv_cache(moeflow_worker::generate::BLOCK_SIZE, args.kv_blocks);
    let replan = ReplanContext {
        rank,
        world_size: membership.world_size,
        target: target.clone(),
        model_dir: args.model.clone(),
        dtype,
        device: device.clone(),
    };
    let engine = match args.comm.as_str() {
        "tcp" => {
            let cfg = TcpConfig {
                peer_timeout: Duration::from_millis(args.peer_timeout_ms),
                heartbeat_interval: Duration::from_millis((args.peer_timeout_ms / 6).max(50)),
                ..TcpConfig::default()
            };
            let comm = TcpComm::connect(
                listener,
                rank,
                membership.peers.clone(),
                identity.clone(),
                cfg,
            )?;
            EngineHandle::spawn(
                Engine::new(model, kv, EpDispatch::new(comm, &plan)?).with_plan(plan.clone(), rank),
            )
        }
        "nccl" => nccl_engine(model, kv, &plan, &membership, args.nccl_device)?,
        other => bail!("--comm: unknown backend `{other}` (tcp, nccl)"),
    };
    let (service, mut shutdown) = WorkerService::new(
        engine,
        rank as u32,
        membership.world_size as u32,
        identity.model_fingerprint.clone(),
        identity.plan_version,
    );
    let service = service.with_replanning(replan);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let control = tokio::net::TcpListener::bind(&args.control_listen)
            .await
            .with_context(|| format!("binding {}", args.control_listen))?;
        let addr = control.local_addr()?;
        println!("MOEFLOW_WORKER_READY rank={rank} world_size={world_size}{leader} control={addr}");
        if let (Some(router), Some(role)) = (&args.router, &args.role) {
            let control_address = format!("{}:{}", args.advertise_host, addr.port());
            let mut client =
                moeflow_proto::v1::registry_client::RegistryClient::connect(router.clone())
                    .await
                    .with_context(|| format!("reaching the router at {router}"))?;
            client
                .register(moeflow_proto::v1::RegisterRequest {
                    role: role.clone(),
                    rank: rank as u32,
                    control_address,
                })
                .await
                .with_context(|| format!("registering with the router at {router}"))?;
        }
        use std::io::Write;
        std::io::stdout().flush()?;
        tonic::transport::Server::builder()
            .add_service(
                WorkerServer::new(service)
                    .max_decoding_message_size(1 << 30)
                    .max_encoding_message_size(1 << 30),
            )
            .serve_with_incoming_shutdown(
                // Without TCP_NODELAY a step response written in more than one segment waits
                // for the router's delayed ACK (tens of milliseconds per step).
                tokio_stream::StreamExt::map(
                    tokio_stream::wrappers::TcpListenerStream::new(control),
                    |s| s.and_then(|s| s.set_nodelay(true).map(|()| s)),
                ),
                async move {
                    let _ = shutdown.wait_for(|s| *s).await;
                },
            )
            .await?;
        anyhow::Ok(())
    })?;
    tracing::info!(rank, "worker stopped");
    Ok(())
}

#[cfg(feature = "nccl")]
fn nccl_engine(
    model: moeflow_worker::model::Transformer,
    kv: moeflow_worker::kv_cache::KvCache,
    plan: &PlacementPlan,
    membership: &moeflow_comm::bootstrap::Membership,
    device: usize,
) -> anyhow::Result<EngineHandle> {
    let id = membership
        .nccl_unique_id
        .context("the coordinator handed out no NCCL unique id")?;
    let comm = moeflow_comm::NcclComm::new(membership.rank, membership.world_size, id, device)?;
    Ok(EngineHandle::spawn(
        Engine::new(model, kv, EpDispatch::new(comm, plan)?)
            .with_plan(plan.clone(), membership.rank),
    ))
}

#[cfg(not(feature = "nccl"))]
fn nccl_engine(
    _model: moeflow_worker::model::Transformer,
    _kv: moeflow_worker::kv_cache::KvCache,
    _plan: &PlacementPlan,
    _membership: &moeflow_comm::bootstrap::Membership,
    _device: usize,
) -> anyhow::Result<EngineHandle> {
    bail!("--comm nccl: this binary was built without the `nccl` feature (cargo build --features nccl)")
}

/// Asks the router's registry which group a worker of `role` joins.
fn discover(router: &str, role: &str) -> anyhow::Result<moeflow_proto::v1::DiscoverResponse> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut client = loop {
            match moeflow_proto::v1::registry_client::RegistryClient::connect(router.to_string())
                .await
            {
                Ok(c) => break c,
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "router not reachable yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    return Err(
                        anyhow::Error::new(e).context(format!("reaching the router at {router}"))
                    )
                }
            }
        };
        let r = client
            .discover(moeflow_proto::v1::DiscoverRequest {
                role: role.to_string(),
            })
            .await
            .with_context(|| format!("asking the router at {router} for the {role} group"))?;
        Ok(r.into_inner())
    })
}

/// Checks the position the pod claims (`LWS_GROUP_SIZE`, `LWS_WORKER_INDEX` or the flags)
/// against the group it joins, so a LeaderWorkerSet sized differently from the router's group
/// fails at start-up with both numbers instead of waiting for ranks that never come.
fn check_position(
    world_size: Option<usize>,
    rank: Option<usize>,
    group_ranks: usize,
    group: &str,
) -> anyhow::Result<()> {
    if let Some(n) = world_size {
        if n != group_ranks {
            bail!("--world-size (LWS_GROUP_SIZE) is {n} but {group} has {group_ranks} ranks");
        }
    }
    if let Some(r) = rank {
        if r >= group_ranks {
            bail!("--rank (LWS_WORKER_INDEX) is {r} but {group} has ranks 0..{group_ranks}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_position;

    #[test]
    fn position_must_fit_the_group() {
        assert!(check_position(None, None, 2, "g").is_ok());
        assert!(check_position(Some(2), Some(1), 2, "g").is_ok());
        let size = check_position(Some(3), Some(0), 2, "the router's decode group")
            .unwrap_err()
            .to_string();
        assert!(
            size.contains("LWS_GROUP_SIZE") && size.contains("decode"),
            "{size}"
        );
        let rank = check_position(Some(2), Some(2), 2, "g")
            .unwrap_err()
            .to_string();
        assert!(rank.contains("LWS_WORKER_INDEX"), "{rank}");
    }
}
