//! Live re-placement through the scheduler: the switch lands between two steps while a
//! request keeps streaming; a refused plan leaves the old one; a broken group refuses.

use super::{config, ended, expected, greedy, prompt, Harness};
use crate::group::GroupClient;
use crate::scheduler::ApplyPlanError;

#[tokio::test]
async fn a_plan_is_committed_between_steps_while_serving_goes_on() {
    let mut h = Harness::new(config(), 2, None);
    let req = greedy("busy", prompt(5, 1), 20);
    let mut rx = h.submit(req.clone()).await;
    h.tick().await;
    let old = h.decode.plan_version();
    let s = h.sched.clone();
    let applied = h
        .call(async move { s.apply_plan("decode", r#"{"plan":2}"#.into()).await })
        .await;
    let applied = match applied {
        Ok(a) => a,
        Err(e) => panic!("plan not applied: {e}"),
    };
    assert_eq!(applied.old_version, old);
    assert_eq!(applied.new_version, h.decode.plan_version());
    assert_ne!(applied.new_version, old);
    let s = h.sched.clone();
    let now = h.call(async move { s.plan("decode").await }).await;
    assert!(
        matches!(now, Ok(ref p) if p.plan_json == r#"{"plan":2}"#),
        "{now:?}"
    );
    h.run_until_idle().await;
    assert_eq!(ended(&mut rx).tokens, expected(&req));
}

#[tokio::test]
async fn a_refused_plan_keeps_the_old_one_and_unknown_groups_are_named() {
    let mut h = Harness::new(config(), 1, None);
    let old = h.decode.plan_version();
    let s = h.sched.clone();
    let r = h
        .call(async move { s.apply_plan("decode", "not json".into()).await })
        .await;
    assert!(
        matches!(r, Err(ApplyPlanError::Refused { ref msg, .. }) if msg.contains("plan_json")),
        "{r:?}"
    );
    assert_eq!(h.decode.plan_version(), old);
    assert!(matches!(h.decode.plan().await, Ok(ref p) if p.plan_version == old));
    let s = h.sched.clone();
    let r = h
        .call(async move { s.apply_plan("prefill", "{}".into()).await })
        .await;
    assert!(matches!(r, Err(ApplyPlanError::NoGroup(_))), "{r:?}");
}

#[tokio::test]
async fn a_broken_group_refuses_a_plan() {
    let mut h = Harness::new(config(), 1, None);
    let mut rx = h.submit(greedy("r", vec![1, 2], 4)).await;
    h.decode.fail_next_step(0);
    h.tick().await;
    ended(&mut rx);
    let s = h.sched.clone();
    let r = h
        .call(async move { s.apply_plan("decode", "{}".into()).await })
        .await;
    assert!(
        matches!(r, Err(ApplyPlanError::GroupFailed { .. })),
        "{r:?}"
    );
}
