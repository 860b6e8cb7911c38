//! The scheduler as it runs in production, on its own task (`Scheduler::start`), driven only
//! through the `Backend` calls: concurrent requests, and a drain that waits for them.

use std::time::Duration;

use super::{config, ended, expected, greedy, info, prompt, seeded, settle};
use crate::group::fake::FakeGroup;
use crate::scheduler::Scheduler;
use moeflow_api::Backend;

#[tokio::test]
async fn concurrent_requests_stream_to_their_end_and_drain_returns() {
    let cfg = config();
    let group = FakeGroup::new(2, cfg.kv_blocks_per_rank, cfg.block_size);
    let sched = Scheduler::start(group.clone(), cfg, info());
    let reqs: Vec<_> = (0..6u32)
        .map(|i| match i % 2 {
            0 => greedy(&format!("r{i}"), prompt(3 + i as usize, i), 5),
            _ => seeded(&format!("r{i}"), prompt(2 + i as usize, i), 7, u64::from(i)),
        })
        .collect();
    let mut rxs = Vec::new();
    for r in &reqs {
        match sched.submit(r.clone()).await {
            Ok(rx) => rxs.push(rx),
            Err(e) => panic!("{}: {e}", r.request_id),
        }
    }
    // A drain returns once every accepted request has ended: then every stream is complete.
    sched.drain(Duration::from_secs(600)).await;
    for (mut rx, r) in rxs.into_iter().zip(&reqs) {
        assert_eq!(ended(&mut rx).tokens, expected(r), "{}", r.request_id);
    }
    assert!(sched.loads().await.iter().all(|l| l.running_sequences == 0));
    settle().await;
    assert_eq!(group.resident(), vec![0, 0]);
    assert!(sched.submit(greedy("late", vec![1], 1)).await.is_err());
}
