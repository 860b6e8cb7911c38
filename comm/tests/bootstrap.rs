//! Group formation over gRPC: consistent memberships, requested ranks, refusals, timeouts, and
//! a full bootstrap into a working TCP group.

mod common;

use std::net::TcpListener;
use std::time::Duration;

use common::{check_all_to_all, identity, on_all};
use moeflow_comm::bootstrap::{
    join, join_blocking, BootstrapError, Coordinator, CoordinatorConfig, JoinRequest, Membership,
    NcclIdSource,
};
use moeflow_comm::{TcpComm, TcpConfig};
use tokio::sync::oneshot;

const CONNECT: Duration = Duration::from_secs(10);

/// Starts a coordinator on a loopback port; returns its URL and a handle that stops it.
async fn start(cfg: CoordinatorConfig) -> (String, Coordinator, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let coordinator = Coordinator::new(cfg).expect("coordinator");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = coordinator.clone();
    tokio::spawn(async move {
        let _ = server
            .serve(listener, async {
                let _ = stopped.await;
            })
            .await;
    });
    (url, coordinator, stop)
}

fn request(address: &str, requested_rank: Option<usize>) -> JoinRequest {
    JoinRequest {
        address: address.into(),
        requested_rank,
        identity: identity(),
        want_nccl_id: false,
    }
}

async fn join_all(
    url: &str,
    requests: Vec<JoinRequest>,
) -> Vec<Result<Membership, BootstrapError>> {
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|r| {
            let url = url.to_string();
            tokio::spawn(async move { join(&url, r, CONNECT).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("join task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_joiners_get_one_consistent_membership() {
    let (url, coordinator, _stop) = start(CoordinatorConfig::new(3, identity())).await;
    let addrs = ["10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000"];
    let got = join_all(&url, addrs.iter().map(|a| request(a, None)).collect()).await;
    let members: Vec<Membership> = got.into_iter().map(|r| r.expect("joined")).collect();
    let mut ranks: Vec<usize> = members.iter().map(|m| m.rank).collect();
    ranks.sort();
    assert_eq!(ranks, vec![0, 1, 2]);
    for (m, addr) in members.iter().zip(addrs) {
        assert_eq!(m.world_size, 3);
        assert_eq!(m.peers, members[0].peers, "same peer list everywhere");
        assert_eq!(m.peers[m.rank], addr, "own address at own rank");
        assert_eq!(m.identity, identity());
        assert_eq!(m.nccl_unique_id, None);
    }
    assert_eq!(coordinator.formed().await, members[0].peers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requested_ranks_are_honoured() {
    let (url, _c, _stop) = start(CoordinatorConfig::new(3, identity())).await;
    // LeaderWorkerSet style: each worker knows its index; they join in reverse order.
    let reqs = vec![
        request("w2:7000", Some(2)),
        request("w1:7000", Some(1)),
        request("w0:7000", Some(0)),
    ];
    let members: Vec<Membership> = join_all(&url, reqs)
        .await
        .into_iter()
        .map(|r| r.expect("joined"))
        .collect();
    assert_eq!(members[0].rank, 2);
    assert_eq!(members[2].rank, 0);
    assert_eq!(members[0].peers, vec!["w0:7000", "w1:7000", "w2:7000"]);
}

fn refused(r: &Result<Membership, BootstrapError>) -> (tonic::Code, String) {
    match r {
        Err(BootstrapError::Refused { code, message }) => (*code, message.clone()),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_of_another_model_or_plan_is_refused() {
    let (url, _c, _stop) = start(CoordinatorConfig::new(2, identity())).await;
    let mut other_model = request("bad:1", None);
    other_model.identity.model_fingerprint = "other-model".into();
    let mut other_plan = request("bad:2", None);
    other_plan.identity.plan_version = 99;
    let mut other_group = request("bad:3", None);
    other_group.identity.group_id = "another".into();
    let results = join_all(&url, vec![other_model, other_plan, other_group]).await;
    let expected = ["model_fingerprint", "plan_version", "group_id"];
    for (r, field) in results.iter().zip(expected) {
        let (code, message) = refused(r);
        assert_eq!(code, tonic::Code::FailedPrecondition);
        assert!(message.contains(field), "{message}");
    }
    // The refused joiners took no rank: two good ones still form the group.
    let good = join_all(&url, vec![request("a:1", None), request("b:1", None)]).await;
    for r in good {
        r.expect("joined");
    }
    // And once formed, a newcomer is refused.
    let late = join_all(&url, vec![request("late:1", None)]).await;
    assert_eq!(refused(&late[0]).0, tonic::Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_rank_is_refused() {
    let cfg = CoordinatorConfig {
        join_timeout: Duration::from_millis(500),
        ..CoordinatorConfig::new(3, identity())
    };
    let (url, _c, _stop) = start(cfg).await;
    let results = join_all(&url, vec![request("a:1", Some(1)), request("b:1", Some(1))]).await;
    let refusals: Vec<_> = results
        .iter()
        .filter_map(|r| match r {
            Err(BootstrapError::Refused { code, .. }) => Some(*code),
            _ => None,
        })
        .collect();
    // One is refused for the taken rank, the other times out waiting for rank 0 and 2.
    assert!(
        refusals.contains(&tonic::Code::AlreadyExists),
        "{refusals:?}"
    );
    assert!(
        refusals.contains(&tonic::Code::DeadlineExceeded),
        "{refusals:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_that_waits_too_long_times_out_and_frees_its_rank() {
    let cfg = CoordinatorConfig {
        join_timeout: Duration::from_millis(300),
        ..CoordinatorConfig::new(2, identity())
    };
    let (url, _c, _stop) = start(cfg).await;
    let lonely = join_all(&url, vec![request("a:1", Some(0))]).await;
    let (code, message) = refused(&lonely[0]);
    assert_eq!(code, tonic::Code::DeadlineExceeded);
    assert!(message.contains("missing ranks [1]"), "{message}");
    // Rank 0 was freed: a replacement worker at another address can take it.
    let group = join_all(&url, vec![request("b:1", Some(0)), request("c:1", Some(1))]).await;
    let m = group[0].as_ref().expect("joined");
    assert_eq!(m.peers, vec!["b:1", "c:1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nccl_ids_are_handed_out_once_or_refused() {
    let mut cfg = CoordinatorConfig::new(2, identity());
    cfg.nccl_id = NcclIdSource::Fixed([7; 128]);
    let (url, _c, _stop) = start(cfg).await;
    let mut a = request("a:1", None);
    a.want_nccl_id = true;
    let got = join_all(&url, vec![a, request("b:1", None)]).await;
    for r in got {
        assert_eq!(r.expect("joined").nccl_unique_id, Some([7; 128]));
    }

    let mut cfg = CoordinatorConfig::new(1, identity());
    cfg.nccl_id = NcclIdSource::Unavailable("no libnccl here".into());
    let (url, _c, _stop) = start(cfg).await;
    let mut a = request("a:1", None);
    a.want_nccl_id = true;
    let got = join_all(&url, vec![a]).await;
    let (code, message) = refused(&got[0]);
    assert_eq!(code, tonic::Code::FailedPrecondition);
    assert!(message.contains("no libnccl here"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_by_the_client() {
    let r = join("not a url", request("a:1", None), CONNECT).await;
    assert!(matches!(r, Err(BootstrapError::InvalidUrl { .. })), "{r:?}");
    let r = join("http://127.0.0.1:9", request("no-port", None), CONNECT).await;
    assert!(matches!(r, Err(BootstrapError::Refused { .. })), "{r:?}");
    let r = join(
        "http://127.0.0.1:9",
        request("a:1", None),
        Duration::from_millis(100),
    )
    .await;
    assert!(
        matches!(r, Err(BootstrapError::Unreachable { .. })),
        "{r:?}"
    );
}

/// What a worker process does: bind, join, connect, exchange activations.
#[test]
fn bootstrap_then_tcp_group() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (url, _c, _stop) = rt.block_on(start(CoordinatorConfig::new(3, identity())));
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
                let address = listener.local_addr().expect("addr").to_string();
                let m = join_blocking(&url, request(&address, None), CONNECT).expect("joined");
                TcpComm::connect(listener, m.rank, m.peers, m.identity, TcpConfig::default())
                    .expect("group forms")
            })
        })
        .collect();
    let mut comms: Vec<TcpComm> = workers
        .into_iter()
        .map(|w| w.join().expect("worker"))
        .collect();
    comms.sort_by_key(moeflow_comm::Communicator::rank);
    let sizes = vec![vec![10, 2000, 0], vec![5, 0, 70_000], vec![1, 1, 1]];
    check_all_to_all(&mut comms, &sizes, 0);
    for r in on_all(&mut comms, moeflow_comm::Communicator::barrier) {
        r.expect("barrier");
    }
}
