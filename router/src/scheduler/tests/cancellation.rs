//! Cancellation: a dropped receiver frees the sequence's blocks at once, on the scheduler's
//! books and on its rank; `abort` ends a waiting or running request by id.

use super::{config, ended, expected, greedy, received, settle, Harness};
use crate::scheduler::SchedulerConfig;
use moeflow_api::{Backend, FinishReason, TokenEvent, Usage};

#[tokio::test]
async fn a_dropped_receiver_frees_its_blocks_and_others_go_on() {
    let mut h = Harness::new(config(), 1, None);
    let mut gone = h.submit(greedy("gone", vec![5, 6, 7], 100)).await;
    let stays = greedy("stays", vec![1, 2], 8);
    let mut kept = h.submit(stays.clone()).await;
    for _ in 0..3 {
        h.tick().await;
    }
    assert_eq!(received(&mut gone).len(), 3);
    assert_eq!(h.decode.resident(), vec![2]);
    drop(gone);
    h.tick().await;
    settle().await;
    assert_eq!(
        h.decode.resident(),
        vec![1],
        "the rank freed the cancelled sequence"
    );
    let loads = h.loads().await;
    // Only "stays" is booked: (2 + 8) / 4 = 3 blocks of 32.
    assert_eq!(loads[0].running_sequences, 1);
    assert_eq!(loads[0].kv_usage, 3.0 / 32.0);
    h.run_until_idle().await;
    assert_eq!(ended(&mut kept).tokens, expected(&stays));
    settle().await;
    assert_eq!(h.decode.used_blocks(), vec![0]);
}

#[tokio::test]
async fn abort_ends_running_and_waiting_requests_by_id() {
    let cfg = SchedulerConfig {
        max_running_per_rank: 1,
        ..config()
    };
    let mut h = Harness::new(cfg, 1, None);
    let mut running = h.submit(greedy("running", vec![1, 2, 3], 50)).await;
    let mut queued = h.submit(greedy("queued", vec![4], 5)).await;
    h.tick().await;
    h.tick().await;
    assert_eq!(h.waiting(), 1);

    let s = h.sched.clone();
    assert!(h.call(async move { s.abort("queued").await }).await);
    let q = ended(&mut queued);
    assert!(q.tokens.is_empty());
    assert_eq!(
        q.end,
        TokenEvent::Finished {
            reason: FinishReason::Abort,
            usage: Usage {
                prompt_tokens: 1,
                completion_tokens: 0
            }
        }
    );
    assert_eq!(h.waiting(), 0);

    let s = h.sched.clone();
    assert!(h.call(async move { s.abort("running").await }).await);
    let r = ended(&mut running);
    assert!(
        matches!(r.end, TokenEvent::Finished { reason: FinishReason::Abort, usage }
            if usage.completion_tokens as usize == r.tokens.len() && !r.tokens.is_empty()),
        "{r:?}"
    );
    settle().await;
    assert_eq!(h.decode.resident(), vec![0]);

    let s = h.sched.clone();
    assert!(
        !h.call(async move { s.abort("running").await }).await,
        "already ended"
    );
    let s = h.sched.clone();
    assert!(!h.call(async move { s.abort("never-seen").await }).await);
}

#[tokio::test]
async fn a_dropped_waiting_receiver_leaves_the_queue() {
    let cfg = SchedulerConfig {
        max_running_per_rank: 1,
        ..config()
    };
    let mut h = Harness::new(cfg, 1, None);
    let mut first = h.submit(greedy("first", vec![1], 3)).await;
    let queued = h.submit(greedy("queued", vec![2], 3)).await;
    h.tick().await;
    assert_eq!(h.waiting(), 1);
    drop(queued);
    h.tick().await;
    assert_eq!(h.waiting(), 0);
    h.run_until_idle().await;
    ended(&mut first);
    // The dropped request never reached a rank.
    assert!(h.decode.ran().iter().all(|c| c.seq_id == 1));
}
