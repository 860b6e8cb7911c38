//! The router's scheduler over a group of real worker processes: concurrent requests with
//! chunked prefill produce the single-process greedy tokens, cancellation frees the rank's KV
//! blocks, the queue bound answers at once, and a killed worker ends every affected request
//! with a terminal error.

mod common;

use std::time::Duration;

use common::{collect, connect, golden, greedy, info, reference_tokens, start_group, target};
use moeflow_api::{
    Backend, FinishReason, GenerateRequest, SamplingParams, SubmitError, TokenEvent,
};
use moeflow_placement::PlacementPlan;
use moeflow_router::{Scheduler, SchedulerConfig};

#[test]
fn concurrent_requests_match_single_process_and_cancellation_frees_kv() {
    let dir = golden("qwen3_moe");
    let plan = PlacementPlan::contiguous(&target(&dir), 2).expect("plan");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (workers, _tmp) = start_group(&rt, &dir, &plan, "sched-test");
    rt.block_on(async {
        let group = connect(&workers, Duration::from_secs(60)).await;
        let cfg = SchedulerConfig {
            prefill_token_budget: 7, // forces chunked prefill across steps
            max_running_per_rank: 3, // forces queueing
            kv_blocks_per_rank: 64,
            ..SchedulerConfig::default()
        };
        let sched = Scheduler::start(group.clone(), cfg, info());
        let prompts: Vec<Vec<u32>> = (0..6u32)
            .map(|i| {
                (0..(4 + 3 * i))
                    .map(|j| (j * 13 + i * 7 + 1) % 500)
                    .collect()
            })
            .collect();
        let mut streams = Vec::new();
        for (i, p) in prompts.iter().enumerate() {
            streams.push(
                sched
                    .submit(greedy(&format!("r{i}"), p.clone(), 5))
                    .await
                    .expect("submit"),
            );
        }
        let mut results = Vec::new();
        for s in streams {
            results.push(collect(s).await);
        }
        for ((tokens, end), p) in results.iter().zip(&prompts) {
            assert_eq!(tokens, &reference_tokens(&dir, p, 5), "prompt {p:?}");
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

        // Cancellation: drop the receiver after two tokens; the rank frees the sequence.
        let mut rx = sched
            .submit(greedy("cancel-me", vec![5, 6, 7], 100))
            .await
            .expect("submit");
        for _ in 0..2 {
            assert!(matches!(rx.recv().await, Some(TokenEvent::Token { .. })));
        }
        drop(rx);
        // Another request drives the loop past the cancellation.
        let (_t, end) = collect(
            sched
                .submit(greedy("after", vec![9, 9], 3))
                .await
                .expect("submit"),
        )
        .await;
        assert!(matches!(end, Some(TokenEvent::Finished { .. })));
        let mut freed = false;
        for _ in 0..100 {
            let st = group.status().await;
            if st.iter().all(|s| {
                s.as_ref()
                    .map(|s| s.running_sequences == 0)
                    .unwrap_or(false)
            }) {
                freed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(freed, "cancelled sequence still holds KV blocks");
        let loads = sched.loads().await;
        assert!(
            loads
                .iter()
                .all(|l| l.running_sequences == 0 && l.kv_usage == 0.0),
            "{loads:?}"
        );

        // Invalid requests are refused before they are queued.
        let too_long = sched.submit(greedy("long", vec![1; 250], 10)).await;
        assert!(matches!(too_long, Err(SubmitError::Invalid(ref m)) if m.contains("max_tokens")));
    });
    drop(workers);
}

#[test]
fn queue_bound_answers_at_once() {
    let dir = golden("qwen3_moe");
    let plan = PlacementPlan::contiguous(&target(&dir), 1).expect("plan");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (workers, _tmp) = start_group(&rt, &dir, &plan, "queue-test");
    rt.block_on(async {
        let group = connect(&workers, Duration::from_secs(60)).await;
        let sched = Scheduler::start(
            group,
            SchedulerConfig {
                max_waiting: 0,
                ..SchedulerConfig::default()
            },
            info(),
        );
        let r = sched.submit(greedy("x", vec![1, 2], 2)).await;
        assert!(matches!(r, Err(SubmitError::Overloaded(_))));
    });
    drop(workers);
}

#[test]
fn killed_worker_ends_streams_with_terminal_error() {
    let dir = golden("llama4");
    let plan = PlacementPlan::contiguous(&target(&dir), 2).expect("plan");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (mut workers, _tmp) = start_group(&rt, &dir, &plan, "kill-sched");
    rt.block_on(async {
        let group = connect(&workers, Duration::from_secs(60)).await;
        let sched = Scheduler::start(group, SchedulerConfig::default(), info());
        let mut a = sched
            .submit(greedy("a", vec![1, 2, 3], 200))
            .await
            .expect("submit");
        let b = sched
            .submit(greedy("b", vec![4, 5], 200))
            .await
            .expect("submit");
        assert!(matches!(a.recv().await, Some(TokenEvent::Token { .. })));
        let _ = workers[1].child.kill();
        let _ = workers[1].child.wait();
        let (_, end_a) = collect(a).await;
        let (_, end_b) = collect(b).await;
        assert!(matches!(end_a, Some(TokenEvent::Error { .. })), "{end_a:?}");
        assert!(matches!(end_b, Some(TokenEvent::Error { .. })), "{end_b:?}");
        assert!(!sched.health()[0].healthy);
        assert!(matches!(
            sched.submit(greedy("c", vec![1], 2)).await,
            Err(SubmitError::Unavailable(_))
        ));
    });
    drop(workers);
}

fn sampled(id: &str, prompt: Vec<u32>, max_tokens: u32, seed: u64) -> GenerateRequest {
    GenerateRequest {
        request_id: id.into(),
        prompt,
        sampling: SamplingParams {
            temperature: 0.9,
            top_p: 0.95,
            top_k: 50,
            seed: Some(seed),
            top_logprobs: 0,
        },
        max_tokens,
        stop_token_ids: Vec::new(),
        workload: None,
    }
}

#[test]
fn disaggregated_prefill_moves_kv_and_matches_aggregated() {
    let dir = golden("deepseek_v3");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (pw, _t1) = start_group(
        &rt,
        &dir,
        &PlacementPlan::contiguous(&target(&dir), 2).expect("plan"),
        "pd-prefill",
    );
    let (dw, _t2) = start_group(
        &rt,
        &dir,
        &PlacementPlan::contiguous(&target(&dir), 2).expect("plan"),
        "pd-decode",
    );
    rt.block_on(async {
        let prefill = connect(&pw, Duration::from_secs(60)).await;
        let decode = connect(&dw, Duration::from_secs(60)).await;
        let pd = Scheduler::start_disaggregated(
            Some(prefill.clone()),
            decode.clone(),
            SchedulerConfig::default(),
            info(),
        );
        let prompts: Vec<Vec<u32>> = (0..4u32)
            .map(|i| {
                (0..(6 + 5 * i))
                    .map(|j| (j * 31 + i * 3 + 2) % 500)
                    .collect()
            })
            .collect();
        // Greedy through prefill → KV transfer → decode equals single-process generation.
        let mut streams = Vec::new();
        for (i, p) in prompts.iter().enumerate() {
            streams.push(
                pd.submit(greedy(&format!("g{i}"), p.clone(), 6))
                    .await
                    .expect("submit"),
            );
        }
        for (s, p) in streams.into_iter().zip(&prompts) {
            let (tokens, end) = collect(s).await;
            assert_eq!(tokens, reference_tokens(&dir, p, 6), "prompt {p:?}");
            assert!(matches!(
                end,
                Some(TokenEvent::Finished {
                    reason: FinishReason::Length,
                    ..
                })
            ));
        }
        // Alternatives come with every token, from the prefill rank (the first) and after the
        // KV transfer from the decode rank: most likely first, the greedy pick at their head.
        let mut req = greedy("alts", prompts[1].clone(), 5);
        req.sampling.top_logprobs = 4;
        let mut rx = pd.submit(req).await.expect("submit");
        let mut seen = Vec::new();
        while let Some(TokenEvent::Token { id, logprob, top }) =
            tokio::time::timeout(Duration::from_secs(120), rx.recv())
                .await
                .expect("stream must not hang")
        {
            assert_eq!(top.len(), 4, "token {id}");
            assert_eq!(top[0], (id, logprob), "the greedy pick is the likeliest");
            assert!(top.windows(2).all(|w| w[0].1 >= w[1].1), "{top:?}");
            assert!(top.iter().all(|t| t.1 <= 0.0));
            seen.push(id);
        }
        assert_eq!(seen, reference_tokens(&dir, &prompts[1], 5));
        let mut too_many = greedy("alts-21", prompts[1].clone(), 5);
        too_many.sampling.top_logprobs = 21;
        let err = pd.submit(too_many).await.expect_err("refused at admission");
        assert!(err.to_string().contains("top_logprobs"), "{err}");

        // Seeded sampling continues on the decode rank exactly as on one worker.
        let agg = Scheduler::start(decode.clone(), SchedulerConfig::default(), info());
        for (i, p) in prompts.iter().enumerate() {
            let (a, _) = collect(
                pd.submit(sampled(&format!("s{i}"), p.clone(), 8, 1234 + i as u64))
                    .await
                    .expect("submit"),
            )
            .await;
            let (b, _) = collect(
                agg.submit(sampled(&format!("t{i}"), p.clone(), 8, 1234 + i as u64))
                    .await
                    .expect("submit"),
            )
            .await;
            assert_eq!(
                a, b,
                "seeded sampling must not depend on where the sequence ran"
            );
        }
        // Everything was released on both groups.
        for g in [&prefill, &decode] {
            let mut clean = false;
            for _ in 0..100 {
                if g.status().await.iter().all(|s| {
                    s.as_ref()
                        .map(|s| s.running_sequences == 0)
                        .unwrap_or(false)
                }) {
                    clean = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(clean, "sequences left on a group after completion");
        }
    });
    drop(pw);
    drop(dw);
}

#[test]
fn dead_prefill_group_fails_its_requests_and_decode_keeps_serving() {
    let dir = golden("qwen3_moe");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (mut pw, _t1) = start_group(
        &rt,
        &dir,
        &PlacementPlan::contiguous(&target(&dir), 2).expect("plan"),
        "pdk-prefill",
    );
    let (dw, _t2) = start_group(
        &rt,
        &dir,
        &PlacementPlan::contiguous(&target(&dir), 1).expect("plan"),
        "pdk-decode",
    );
    rt.block_on(async {
        let prefill = connect(&pw, Duration::from_secs(60)).await;
        let decode = connect(&dw, Duration::from_secs(60)).await;
        let sched = Scheduler::start_disaggregated(
            Some(prefill),
            decode,
            SchedulerConfig::default(),
            info(),
        );
        let (t, _) = collect(
            sched
                .submit(greedy("warm", vec![1, 2, 3], 2))
                .await
                .expect("submit"),
        )
        .await;
        assert_eq!(t.len(), 2);
        let _ = pw[0].child.kill();
        let _ = pw[0].child.wait();
        // The next prompt hits the dead prefill group: a terminal error, not a hang.
        let (_, end) = collect(
            sched
                .submit(greedy("doomed", vec![4, 5, 6], 4))
                .await
                .expect("submit"),
        )
        .await;
        assert!(matches!(end, Some(TokenEvent::Error { .. })), "{end:?}");
        let health = sched.health();
        assert!(
            health.iter().any(|c| c.name == "prefill" && !c.healthy),
            "{health:?}"
        );
        assert!(
            health.iter().any(|c| c.name == "decode" && c.healthy),
            "{health:?}"
        );
        // New requests are still served (prefilled on the decode group).
        let p = vec![7, 8, 9, 10];
        let (tokens, end) = collect(
            sched
                .submit(greedy("after", p.clone(), 4))
                .await
                .expect("submit"),
        )
        .await;
        assert!(matches!(end, Some(TokenEvent::Finished { .. })), "{end:?}");
        assert_eq!(tokens, reference_tokens(&dir, &p, 4));
    });
    drop(pw);
    drop(dw);
}
