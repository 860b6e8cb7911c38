//! Admission budgets: KV blocks and running sequences per rank, the waiting-queue bound, and
//! requests no rank could ever hold.

use super::{config, ended, expected, greedy, prompt, Harness};
use crate::scheduler::SchedulerConfig;
use moeflow_api::{Backend, FinishReason, SubmitError, TokenEvent};

#[tokio::test]
async fn kv_blocks_per_rank_bound_what_runs_at_once() {
    // Each request reserves (10 + 10) / 4 = 5 blocks; a rank holds 8: one per rank.
    let cfg = SchedulerConfig {
        kv_blocks_per_rank: 8,
        ..config()
    };
    let mut h = Harness::new(cfg, 2, None);
    let reqs: Vec<_> = (0..3)
        .map(|i| greedy(&format!("r{i}"), prompt(10, i), 10))
        .collect();
    let mut rxs = Vec::new();
    for r in &reqs {
        rxs.push(h.submit(r.clone()).await);
    }
    h.tick().await;
    let loads = h.loads().await;
    assert!(
        loads
            .iter()
            .all(|l| l.running_sequences == 1 && l.kv_usage == 5.0 / 8.0),
        "{loads:?}"
    );
    assert_eq!(h.waiting(), 1, "the third request waits for blocks");
    h.run_until_idle().await;
    for (rx, r) in rxs.iter_mut().zip(&reqs) {
        let e = ended(rx);
        assert_eq!(e.tokens, expected(r));
        assert!(matches!(
            e.end,
            TokenEvent::Finished {
                reason: FinishReason::Length,
                ..
            }
        ));
    }
    // The third ran only after another had left.
    let ran = h.decode.ran();
    let last_start = ran.iter().find(|c| c.seq_id == 3).map(|c| c.step_id);
    let first_done = ran
        .iter()
        .filter(|c| c.seq_id == 1)
        .map(|c| c.step_id)
        .max();
    assert!(last_start > first_done, "{last_start:?} {first_done:?}");
    assert_eq!(h.loads().await.iter().map(|l| l.kv_usage).sum::<f32>(), 0.0);
}

#[tokio::test]
async fn running_sequences_per_rank_are_bounded() {
    let cfg = SchedulerConfig {
        max_running_per_rank: 2,
        ..config()
    };
    let mut h = Harness::new(cfg, 2, None);
    let mut rxs = Vec::new();
    for i in 0..7 {
        rxs.push(h.submit(greedy(&format!("r{i}"), prompt(3, i), 4)).await);
    }
    h.run_until_idle().await;
    for rx in &mut rxs {
        assert_eq!(ended(rx).tokens.len(), 4);
    }
    let ran = h.decode.ran();
    for step in 0..=ran.iter().map(|c| c.step_id).max().unwrap_or(0) {
        for rank in 0..2 {
            let n = ran
                .iter()
                .filter(|c| c.step_id == step && c.rank == rank)
                .count();
            assert!(n <= 2, "step {step} ran {n} sequences on rank {rank}");
        }
    }
}

#[tokio::test]
async fn new_sequences_go_to_the_least_loaded_rank() {
    let mut h = Harness::new(config(), 3, None);
    // 8, 4 and 2 blocks: each lands on an empty rank; then 1 block goes to the lightest.
    let sizes = [(20, 12), (10, 6), (5, 3), (2, 2)];
    let mut rxs = Vec::new();
    for (i, (p, m)) in sizes.iter().enumerate() {
        rxs.push(
            h.submit(greedy(&format!("r{i}"), prompt(*p, i as u32), *m))
                .await,
        );
    }
    h.tick().await;
    let rank_of = |seq| {
        h.decode
            .ran()
            .iter()
            .find(|c| c.seq_id == seq)
            .map(|c| c.rank)
    };
    assert_eq!(
        [rank_of(1), rank_of(2), rank_of(3), rank_of(4)],
        [Some(0), Some(1), Some(2), Some(2)]
    );
    h.run_until_idle().await;
    for rx in &mut rxs {
        ended(rx);
    }
}

#[tokio::test]
async fn a_full_queue_answers_overloaded_at_once() {
    let cfg = SchedulerConfig {
        max_waiting: 2,
        ..config()
    };
    let mut h = Harness::new(cfg, 1, None);
    let mut a = h.submit(greedy("a", vec![1, 2], 2)).await;
    let mut b = h.submit(greedy("b", vec![3, 4], 2)).await;
    let full = h.sched.submit(greedy("c", vec![5], 2)).await;
    assert!(
        matches!(full, Err(SubmitError::Overloaded(ref m)) if m.contains("limit 2")),
        "{full:?}"
    );
    // Admission empties the queue; then there is room again.
    h.tick().await;
    assert_eq!(h.waiting(), 0);
    let mut c = h.submit(greedy("c", vec![5], 2)).await;
    h.run_until_idle().await;
    for rx in [&mut a, &mut b, &mut c] {
        assert_eq!(ended(rx).tokens.len(), 2);
    }
}

#[tokio::test]
async fn requests_no_rank_can_hold_are_invalid_before_queueing() {
    let h = Harness::new(config(), 2, None);
    // 32 blocks of 4 tokens per rank: 100 + 40 tokens need 35.
    let too_big = h.sched.submit(greedy("big", vec![1; 100], 40)).await;
    assert!(
        matches!(too_big, Err(SubmitError::Invalid(ref m)) if m.contains("max_tokens") && m.contains("35 KV blocks")),
        "{too_big:?}"
    );
    let empty = h.sched.submit(greedy("empty", Vec::new(), 4)).await;
    assert!(matches!(empty, Err(SubmitError::Invalid(ref m)) if m.starts_with("prompt")));
    let none = h.sched.submit(greedy("none", vec![1], 0)).await;
    assert!(matches!(none, Err(SubmitError::Invalid(ref m)) if m.starts_with("max_tokens")));
    assert_eq!(h.waiting(), 0);
}
