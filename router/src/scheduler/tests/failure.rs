//! Failure: a failed step ends every sequence of its group with exactly one error, the group
//! is reported down, and a dead decode group refuses new requests while a dead prefill group
//! leaves decode serving.

use super::{config, ended, expected, greedy, prompt, Harness};
use crate::scheduler::SchedulerConfig;
use moeflow_api::{Backend, SubmitError, TokenEvent};

#[tokio::test]
async fn a_failed_step_ends_every_sequence_of_the_group_with_one_error() {
    let cfg = SchedulerConfig {
        max_running_per_rank: 1,
        ..config()
    };
    let mut h = Harness::new(cfg, 2, None);
    let mut rxs = Vec::new();
    for i in 0..3 {
        rxs.push(h.submit(greedy(&format!("r{i}"), prompt(4, i), 50)).await);
    }
    h.tick().await;
    h.tick().await;
    assert_eq!(h.waiting(), 1);
    h.decode.fail_next_step(1);
    h.tick().await;
    for rx in &mut rxs {
        let e = ended(rx);
        assert!(
            matches!(&e.end, TokenEvent::Error { message } if message.contains("rank 1")),
            "{e:?}"
        );
    }
    let health = h.sched.health();
    assert_eq!(health.len(), 1);
    assert!(
        !health[0].healthy && health[0].detail.contains("rank 1"),
        "{health:?}"
    );
    let refused = h.sched.submit(greedy("late", vec![1], 2)).await;
    assert!(
        matches!(refused, Err(SubmitError::Unavailable(_))),
        "{refused:?}"
    );
    assert!(h
        .loads()
        .await
        .iter()
        .all(|l| l.running_sequences == 0 && l.kv_usage == 0.0));
    assert_eq!(h.run_until_idle().await, 0, "a broken group runs nothing");
}

#[tokio::test]
async fn a_dead_decode_rank_in_disaggregated_mode_ends_everything() {
    let mut h = Harness::new(config(), 2, Some(1));
    let mut moved = h.submit(greedy("moved", prompt(3, 1), 40)).await;
    h.tick().await;
    let mut prefilling = h.submit(greedy("prefilling", prompt(5, 2), 40)).await;
    h.decode.kill(0);
    h.tick().await;
    for rx in [&mut moved, &mut prefilling] {
        let e = ended(rx);
        assert!(matches!(e.end, TokenEvent::Error { .. }), "{e:?}");
    }
    assert_eq!(
        h.up(),
        vec![("decode".into(), false), ("prefill".into(), true)]
    );
    assert!(matches!(
        h.sched.submit(greedy("late", vec![1], 2)).await,
        Err(SubmitError::Unavailable(_))
    ));
}

#[tokio::test]
async fn a_dead_prefill_group_fails_its_prompts_and_decode_keeps_serving() {
    let mut h = Harness::new(config(), 1, Some(2));
    let Some(prefill) = h.prefill.clone() else {
        panic!("the harness has a prefill group");
    };
    let decoding = greedy("decoding", prompt(3, 1), 12);
    let mut a = h.submit(decoding.clone()).await;
    h.tick().await;
    // "decoding" has moved to decode; "doomed" is on the prefill group when it dies.
    let mut doomed = h.submit(greedy("doomed", prompt(4, 2), 4)).await;
    prefill.kill(0);
    h.tick().await;
    let d = ended(&mut doomed);
    assert!(
        matches!(&d.end, TokenEvent::Error { message } if message.contains("prefill")),
        "{d:?}"
    );
    assert_eq!(
        h.up(),
        vec![("decode".into(), true), ("prefill".into(), false)]
    );
    // New prompts prefill on the decode group.
    let after = greedy("after", prompt(6, 3), 4);
    let mut b = h.submit(after.clone()).await;
    h.run_until_idle().await;
    assert_eq!(ended(&mut a).tokens, expected(&decoding));
    assert_eq!(ended(&mut b).tokens, expected(&after));
    assert!(h.decode.ran().iter().any(|c| c.seq_id == 3 && c.prompt));
}
