//! The NCCL backend through the real group bootstrap: a coordinator hands out the unique id a
//! joiner asks for, and a one-rank group exchanges an all-to-all over NCCL.
//!
//! Where NCCL or a GPU is missing (CI, developers' CPU machines) the same path must end in a
//! refusal that names what is missing, never a panic or a hang; on a GPU machine
//! (`bench/gpu_check.sh`) it must form the group and move the bytes.
#![cfg(feature = "nccl")]

mod common;

use std::time::Duration;

use common::identity;
use moeflow_comm::bootstrap::{join, BootstrapError, Coordinator, CoordinatorConfig, JoinRequest};
use moeflow_comm::{CommError, Communicator, NcclComm};

#[tokio::test]
async fn nccl_bootstrap_forms_a_one_rank_group_or_names_what_is_missing() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    // The default id source creates the id in this process, as `moeflow serve` and the
    // router's registry do.
    let coordinator = Coordinator::new(CoordinatorConfig::new(1, identity())).expect("coordinator");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(coordinator.serve(listener, async {
        let _ = stopped.await;
    }));

    let joined = join(
        &url,
        JoinRequest {
            address: "127.0.0.1:1".into(),
            requested_rank: None,
            identity: identity(),
            want_nccl_id: true,
        },
        Duration::from_secs(10),
    )
    .await;
    let available = NcclComm::check_available();
    match (joined, available) {
        (Err(BootstrapError::Refused { code, message }), Err(_)) => {
            assert_eq!(code, tonic::Code::FailedPrecondition, "{message}");
            assert!(message.contains("NCCL unique id"), "{message}");
            assert!(message.contains("libnccl"), "{message}");
        }
        (Ok(m), Err(missing)) => {
            // libnccl is there (the id could be made) but the driver or a GPU is not.
            let id = m.nccl_unique_id.expect("the id that was asked for");
            let made = tokio::task::spawn_blocking(move || NcclComm::new(0, 1, id, 0))
                .await
                .expect("join");
            match made {
                Err(CommError::NotAvailable(msg)) => assert!(!msg.is_empty(), "{missing}"),
                Err(other) => panic!("expected NotAvailable, got {other}"),
                Ok(_) => panic!("a communicator without {missing}"),
            }
        }
        (Ok(m), Ok(())) => {
            assert_eq!((m.rank, m.world_size), (0, 1));
            let id = m.nccl_unique_id.expect("the id that was asked for");
            let echoed = tokio::task::spawn_blocking(move || {
                let mut comm = NcclComm::new(0, 1, id, 0)?;
                comm.all_to_all_v(vec![b"moeflow over nccl".to_vec()])
            })
            .await
            .expect("join")
            .expect("all-to-all over one rank");
            assert_eq!(echoed, vec![b"moeflow over nccl".to_vec()]);
        }
        (Err(e), _) => panic!("the bootstrap failed otherwise than by naming NCCL: {e}"),
    }
    let _ = stop.send(());
    let _ = server.await;
}
