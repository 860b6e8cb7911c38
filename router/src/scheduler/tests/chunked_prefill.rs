//! Chunked prefill: prompt tokens per step stay within `prefill_token_budget` over the whole
//! group, older requests first, decode tokens on top; only the last chunk samples.

use std::collections::BTreeMap;

use super::{config, ended, expected, greedy, prompt, Harness};
use crate::group::fake::Ran;
use crate::scheduler::SchedulerConfig;

/// Prompt tokens per step.
fn prompt_tokens_per_step(ran: &[Ran]) -> BTreeMap<u64, usize> {
    let mut per = BTreeMap::new();
    for c in ran.iter().filter(|c| c.prompt) {
        *per.entry(c.step_id).or_default() += c.tokens;
    }
    per
}

#[tokio::test]
async fn prompts_are_chunked_within_the_step_budget() {
    let cfg = SchedulerConfig {
        prefill_token_budget: 5,
        ..config()
    };
    let mut h = Harness::new(cfg, 2, None);
    let reqs: Vec<_> = [12, 7, 3, 9]
        .iter()
        .enumerate()
        .map(|(i, &n)| greedy(&format!("r{i}"), prompt(n, i as u32), 4))
        .collect();
    let mut rxs = Vec::new();
    for r in &reqs {
        rxs.push(h.submit(r.clone()).await);
    }
    h.run_until_idle().await;
    for (rx, r) in rxs.iter_mut().zip(&reqs) {
        assert_eq!(ended(rx).tokens, expected(r), "{}", r.request_id);
    }
    let ran = h.decode.ran();
    let per_step = prompt_tokens_per_step(&ran);
    assert!(per_step.values().all(|&n| n <= 5), "{per_step:?}");
    // 31 prompt tokens at 5 a step: the budget is used in full until the last prompt chunk.
    assert_eq!(per_step.values().sum::<usize>(), 31);
    assert_eq!(per_step.len(), 7);
    // The oldest request's prompt is done before a younger one starts (seq 1 is 12 tokens:
    // steps 0, 1 and 2, which it shares with seq 2).
    let steps_of = |seq: u64| -> Vec<u64> {
        ran.iter()
            .filter(|c| c.seq_id == seq && c.prompt)
            .map(|c| c.step_id)
            .collect()
    };
    assert_eq!(steps_of(1), vec![0, 1, 2]);
    assert_eq!(steps_of(2)[0], 2);
}

#[tokio::test]
async fn decode_tokens_do_not_wait_for_the_prefill_budget() {
    let cfg = SchedulerConfig {
        prefill_token_budget: 4,
        ..config()
    };
    let mut h = Harness::new(cfg, 1, None);
    let short = greedy("short", vec![1, 2], 6);
    let long = greedy("long", prompt(16, 3), 2);
    let mut a = h.submit(short.clone()).await;
    h.tick().await;
    let mut b = h.submit(long.clone()).await;
    h.run_until_idle().await;
    assert_eq!(ended(&mut a).tokens, expected(&short));
    assert_eq!(ended(&mut b).tokens, expected(&long));
    // While the long prompt is chunked over four steps, the short request decodes in each.
    let ran = h.decode.ran();
    for step in 1..5 {
        let kinds: Vec<(u64, bool)> = ran
            .iter()
            .filter(|c| c.step_id == step)
            .map(|c| (c.seq_id, c.prompt))
            .collect();
        assert_eq!(kinds, vec![(1, false), (2, true)], "step {step}");
    }
}

#[tokio::test]
async fn only_the_last_prompt_chunk_samples_and_settings_come_once() {
    let cfg = SchedulerConfig {
        prefill_token_budget: 3,
        ..config()
    };
    let mut h = Harness::new(cfg, 1, None);
    let req = greedy("r", prompt(8, 1), 3);
    let mut rx = h.submit(req.clone()).await;
    h.run_until_idle().await;
    assert_eq!(ended(&mut rx).tokens, expected(&req));
    let chunks: Vec<(u32, usize, bool, bool)> = h
        .decode
        .ran()
        .iter()
        .map(|c| (c.start, c.tokens, c.prompt, c.sample))
        .collect();
    assert_eq!(
        chunks,
        vec![
            (0, 3, true, false),
            (3, 3, true, false),
            (6, 2, true, true),
            // The sampled tokens fed back, one per step; the last one never is.
            (8, 1, false, true),
            (9, 1, false, true),
        ]
    );
}
