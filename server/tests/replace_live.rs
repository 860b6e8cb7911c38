//! Live re-placement of a group of real worker processes: requests streaming across a switch
//! produce the single-process greedy tokens, the group's plan fingerprint changes on every
//! rank, and plans that do not fit are refused before anything changes, the old plan serving
//! on.

mod common;

use std::time::Duration;

use common::{collect, connect, golden, greedy, info, reference_tokens, start_group, target};
use moeflow_api::{Backend, FinishReason, TokenEvent};
use moeflow_placement::{PlacementPlan, PlanTarget};
use moeflow_router::scheduler::ApplyPlanError;
use moeflow_router::{Scheduler, SchedulerConfig, WorkerGroup};

fn prompt(i: u32) -> Vec<u32> {
    (0..(5 + 2 * i))
        .map(|j| (j * 17 + i * 11 + 3) % 500)
        .collect()
}

/// Every rank reports the same plan fingerprint; returns it.
async fn rank_fingerprints(group: &WorkerGroup) -> Vec<u64> {
    group
        .status()
        .await
        .into_iter()
        .map(|s| s.expect("status").plan_fingerprint)
        .collect()
}

fn assert_matches_reference(
    dir: &std::path::Path,
    prompts: &[Vec<u32>],
    results: &[(Vec<u32>, Option<TokenEvent>)],
    n: usize,
) {
    for ((tokens, end), p) in results.iter().zip(prompts) {
        assert_eq!(tokens, &reference_tokens(dir, p, n), "prompt {p:?}");
        assert!(
            matches!(
                end,
                Some(TokenEvent::Finished {
                    reason: FinishReason::Length,
                    ..
                })
            ),
            "{end:?}"
        );
    }
}

#[test]
fn a_running_group_switches_plans_without_failing_a_request() {
    let dir = golden("qwen3_moe");
    let t = target(&dir);
    let old = PlacementPlan::contiguous(&t, 2).expect("plan");
    // Every rank gains experts, expert 0 gets a replica on rank 1, expert 7 moves to rank 0.
    let mut new = old.clone();
    for layer in &t.moe_layers {
        new.layers.insert(
            layer.to_string(),
            vec![vec![0, 1, 2, 7], vec![0, 3, 4, 5, 6]],
        );
    }
    new.algorithm = Some("test".into());
    new.validate().expect("new plan");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (workers, _tmp) = start_group(&rt, &dir, &old, "replace-test");
    rt.block_on(async {
        let group = connect(&workers, Duration::from_secs(60)).await;
        let sched = Scheduler::start(
            group.clone(),
            SchedulerConfig {
                prefill_token_budget: 16,
                kv_blocks_per_rank: 64,
                ..SchedulerConfig::default()
            },
            info(),
        );
        assert_eq!(rank_fingerprints(&group).await, vec![old.fingerprint(); 2]);
        let n = 40;
        let prompts: Vec<Vec<u32>> = (0..6).map(prompt).collect();
        let mut streams = Vec::new();
        for (i, p) in prompts.iter().enumerate() {
            streams.push(
                sched
                    .submit(greedy(&format!("a{i}"), p.clone(), n as u32))
                    .await
                    .expect("submit"),
            );
        }
        // Switch while the first wave streams: wait for its first token, then apply.
        let mut first = streams.remove(0);
        let Some(TokenEvent::Token { id: t0, .. }) = first.recv().await else {
            panic!("no first token")
        };
        let applied = sched
            .apply_plan("decode", new.to_json_pretty())
            .await
            .expect("apply");
        assert_eq!(applied.old_version, old.fingerprint());
        assert_eq!(applied.new_version, new.fingerprint());
        // Per MoE layer: rank 0 gains 7 and drops 3, rank 1 gains 0 and 3 and drops 7.
        assert_eq!(applied.experts_loaded as usize, 3 * t.moe_layers.len());
        assert!(applied.bytes_loaded > 0);
        assert_eq!(applied.experts_dropped as usize, 2 * t.moe_layers.len());
        // A second wave runs entirely on the new plan.
        let second: Vec<Vec<u32>> = (6..9).map(prompt).collect();
        let mut later = Vec::new();
        for (i, p) in second.iter().enumerate() {
            later.push(
                sched
                    .submit(greedy(&format!("b{i}"), p.clone(), 12))
                    .await
                    .expect("submit"),
            );
        }
        let (mut rest, end) = collect(first).await;
        rest.insert(0, t0);
        let mut results = vec![(rest, end)];
        for s in streams {
            results.push(collect(s).await);
        }
        assert_matches_reference(&dir, &prompts, &results, n);
        let mut results = Vec::new();
        for s in later {
            results.push(collect(s).await);
        }
        assert_matches_reference(&dir, &second, &results, 12);

        // Every rank runs the new plan, and says so.
        assert_eq!(rank_fingerprints(&group).await, vec![new.fingerprint(); 2]);
        let shown = sched.plan("decode").await.expect("plan");
        assert_eq!(shown.version, new.fingerprint());
        let back: PlacementPlan = serde_json::from_str(&shown.plan_json).expect("json");
        assert_eq!(back.layers, new.layers);

        // Plans that do not fit are refused with the reason; the plan in force stays.
        let other_model = PlacementPlan::contiguous(
            &PlanTarget {
                num_experts: 16,
                moe_layers: t.moe_layers.clone(),
            },
            2,
        )
        .expect("plan");
        let mut unhosted = old.clone();
        let l0 = t.moe_layers[0].to_string();
        unhosted.layers.get_mut(&l0).expect("layer")[1].retain(|&e| e != 6);
        let three_ranks = PlacementPlan::contiguous(&t, 3).expect("plan");
        for (bad, want) in [
            (
                other_model.to_json_pretty(),
                "16 experts per layer, the model has 8",
            ),
            (
                unhosted.to_json_pretty(),
                "expert 6 is not hosted on any rank",
            ),
            (
                three_ranks.to_json_pretty(),
                "plan is for 3 ranks, the group has 2",
            ),
            ("{\"format\": 1}".to_string(), "plan_json"),
        ] {
            let err = sched.apply_plan("decode", bad).await.expect_err("refused");
            assert!(matches!(err, ApplyPlanError::Refused { .. }), "{err:?}");
            assert!(err.to_string().contains(want), "{err} lacks {want}");
        }
        let err = sched
            .apply_plan("prefill", new.to_json_pretty())
            .await
            .expect_err("no prefill group");
        assert!(matches!(err, ApplyPlanError::NoGroup(_)), "{err:?}");
        assert_eq!(rank_fingerprints(&group).await, vec![new.fingerprint(); 2]);
        let (tokens, _) = collect(
            sched
                .submit(greedy("after-bad", prompt(9), 8))
                .await
                .expect("submit"),
        )
        .await;
        assert_eq!(tokens, reference_tokens(&dir, &prompt(9), 8));

        // Back to the original plan, while idle: also a switch between two steps.
        let back = sched
            .apply_plan("decode", old.to_json_pretty())
            .await
            .expect("apply back");
        assert_eq!(back.new_version, old.fingerprint());
        assert_eq!(rank_fingerprints(&group).await, vec![old.fingerprint(); 2]);
        let (tokens, _) = collect(
            sched
                .submit(greedy("after-back", prompt(10), 8))
                .await
                .expect("submit"),
        )
        .await;
        assert_eq!(tokens, reference_tokens(&dir, &prompt(10), 8));
        group.shutdown().await;
    });
}
