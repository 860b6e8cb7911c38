//! Invariants over random workloads, budgets and group shapes, aggregated and disaggregated:
//! every stream that is read to its end ends with exactly one terminal event and carries what
//! one worker would generate; no step exceeds the prompt-token budget or a rank's running
//! limit; the fake ranks never run out of KV blocks; and once everything has ended, nothing
//! is booked or resident anywhere.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::{
    config, ended, ended_with, expected, greedy, received, seeded, settle, token_ids, Harness,
    MAX_TICKS,
};
use crate::scheduler::SchedulerConfig;
use moeflow_api::{FinishReason, GenerateRequest, TokenEvent};

#[derive(Debug, Clone)]
struct Req {
    prompt: Vec<u32>,
    max_tokens: u32,
    seed: Option<u64>,
    /// Stop at the token this request would generate at that index.
    stop_at: Option<usize>,
    /// Drop the receiver after this many ticks.
    drop_after: Option<usize>,
}

#[derive(Debug, Clone)]
struct Case {
    decode: usize,
    prefill: Option<usize>,
    cfg: (usize, usize, usize, usize),
    reqs: Vec<Req>,
}

fn req() -> impl Strategy<Value = Req> {
    (
        prop::collection::vec(0u32..500, 1..13),
        1u32..7,
        prop::option::of(any::<u64>()),
        prop::option::weighted(0.3, 0usize..6),
        prop::option::weighted(0.2, 0usize..6),
    )
        .prop_map(|(prompt, max_tokens, seed, stop_at, drop_after)| Req {
            prompt,
            max_tokens,
            seed,
            stop_at,
            drop_after,
        })
}

fn case() -> impl Strategy<Value = Case> {
    (
        1usize..4,
        prop::option::of(1usize..3),
        // prefill budget, running per rank, KV blocks per rank, block size
        (1usize..16, 1usize..4, 18usize..40, 1usize..5),
        prop::collection::vec(req(), 1..8),
    )
        .prop_map(|(decode, prefill, cfg, reqs)| Case {
            decode,
            prefill,
            cfg,
            reqs,
        })
}

fn request(i: usize, r: &Req) -> GenerateRequest {
    let id = format!("r{i}");
    let mut g = match r.seed {
        Some(s) => seeded(&id, r.prompt.clone(), r.max_tokens, s),
        None => greedy(&id, r.prompt.clone(), r.max_tokens),
    };
    if let Some(k) = r.stop_at {
        let full = expected(&g);
        g.stop_token_ids = full.get(k).copied().into_iter().collect();
    }
    g
}

async fn check(case: Case) {
    let (budget, max_running, kv_blocks, block_size) = case.cfg;
    let cfg = SchedulerConfig {
        prefill_token_budget: budget,
        max_running_per_rank: max_running,
        kv_blocks_per_rank: kv_blocks,
        block_size,
        ..config()
    };
    let mut h = Harness::new(cfg, case.decode, case.prefill);
    let reqs: Vec<GenerateRequest> = case
        .reqs
        .iter()
        .enumerate()
        .map(|(i, r)| request(i, r))
        .collect();
    let mut rxs = Vec::new();
    for r in &reqs {
        rxs.push(Some(h.submit(r.clone()).await));
    }
    let mut seen: Vec<Vec<TokenEvent>> = vec![Vec::new(); reqs.len()];
    let mut idle = false;
    for tick in 0..MAX_TICKS {
        for (i, r) in case.reqs.iter().enumerate() {
            if r.drop_after == Some(tick) {
                if let Some(mut rx) = rxs[i].take() {
                    seen[i].extend(received(&mut rx));
                }
            }
        }
        if h.advance().await {
            idle = true;
            break;
        }
    }
    assert!(idle, "the scheduler did not go idle");
    for ((rx, r), before) in rxs.iter_mut().zip(&reqs).zip(seen) {
        let e = match rx {
            Some(rx) => ended(rx),
            // Dropped before its end: what it got is a prefix of the reference.
            None if before.iter().all(|e| matches!(e, TokenEvent::Token { .. })) => {
                assert!(
                    expected(r).starts_with(&token_ids(&before)),
                    "{}",
                    r.request_id
                );
                continue;
            }
            // Dropped after its end.
            None => ended_with(before),
        };
        let want = expected(r);
        assert_eq!(e.tokens, want, "{}", r.request_id);
        let reason = if want.last().is_some_and(|t| r.stop_token_ids.contains(t)) {
            FinishReason::Stop
        } else {
            FinishReason::Length
        };
        assert!(
            matches!(e.end, TokenEvent::Finished { reason: got, .. } if got == reason),
            "{}: {:?}",
            r.request_id,
            e.end
        );
    }
    // Budgets held in every step.
    let mut ran = h.decode.ran();
    let decode_ran = ran.clone();
    if let Some(p) = &h.prefill {
        ran.extend(p.ran());
    }
    let mut prompt_per_step: BTreeMap<u64, usize> = BTreeMap::new();
    for c in ran.iter().filter(|c| c.prompt) {
        *prompt_per_step.entry(c.step_id).or_default() += c.tokens;
    }
    assert!(
        prompt_per_step.values().all(|&n| n <= budget),
        "{prompt_per_step:?}"
    );
    let mut per_rank_step: BTreeMap<(u64, usize), usize> = BTreeMap::new();
    for c in &decode_ran {
        *per_rank_step.entry((c.step_id, c.rank)).or_default() += 1;
    }
    assert!(
        per_rank_step.values().all(|&n| n <= max_running),
        "{per_rank_step:?}"
    );
    // Nothing left anywhere.
    settle().await;
    assert_eq!(h.waiting(), 0);
    let loads = h.loads().await;
    assert!(
        loads
            .iter()
            .all(|l| l.running_sequences == 0 && l.kv_usage == 0.0),
        "{loads:?}"
    );
    assert!(h.decode.resident().iter().all(|&n| n == 0));
    if let Some(p) = &h.prefill {
        assert!(p.resident().iter().all(|&n| n == 0));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn every_stream_ends_once_with_the_reference_tokens_within_budgets(c in case()) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        rt.block_on(check(c));
    }
}
