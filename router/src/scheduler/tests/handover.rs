//! Disaggregated serving: prompts run on the prefill group, which samples the first token;
//! then the sequence's KV cache and sampler move to the decode rank reserved at admission,
//! and the stream is the same as on one worker.

use super::{config, ended, expected, greedy, prompt, seeded, settle, Harness};
use crate::scheduler::SchedulerConfig;
use moeflow_api::TokenEvent;

#[tokio::test]
async fn the_prefill_rank_samples_first_then_the_reserved_decode_rank_continues() {
    let mut h = Harness::new(config(), 2, Some(2));
    let reqs: Vec<_> = (0..4u32)
        .map(|i| greedy(&format!("g{i}"), prompt(6 + 5 * i as usize, i), 6))
        .collect();
    let mut rxs = Vec::new();
    for r in &reqs {
        rxs.push(h.submit(r.clone()).await);
    }
    h.run_until_idle().await;
    let Some(prefill) = h.prefill.clone() else {
        panic!("the harness has a prefill group");
    };
    for (i, (rx, r)) in rxs.iter_mut().zip(&reqs).enumerate() {
        let seq = i as u64 + 1;
        let tokens = ended(rx).tokens;
        assert_eq!(tokens, expected(r), "{}", r.request_id);
        // The prefill group ran the whole prompt and nothing else; its last chunk sampled the
        // first token.
        let on_prefill: Vec<_> = prefill
            .ran()
            .into_iter()
            .filter(|c| c.seq_id == seq)
            .collect();
        assert!(on_prefill.iter().all(|c| c.prompt));
        assert_eq!(
            on_prefill.iter().map(|c| c.tokens).sum::<usize>(),
            r.prompt.len()
        );
        assert_eq!(on_prefill.last().and_then(|c| c.token), Some(tokens[0]));
        // It moved out of the rank that ran it, into one decode rank, which never saw the
        // prompt: it continues from the first token.
        let from = on_prefill[0].rank;
        assert!(prefill.exported().contains(&(from, seq)));
        let into: Vec<_> = h
            .decode
            .imported()
            .into_iter()
            .filter(|i| i.1 == seq)
            .collect();
        assert_eq!(into.len(), 1);
        let on_decode: Vec<_> = h
            .decode
            .ran()
            .into_iter()
            .filter(|c| c.seq_id == seq)
            .collect();
        assert!(on_decode.iter().all(|c| !c.prompt && c.rank == into[0].0));
        assert_eq!(
            on_decode.first().map(|c| c.start as usize),
            Some(r.prompt.len())
        );
    }
    settle().await;
    assert_eq!(prefill.resident(), vec![0, 0]);
    assert_eq!(h.decode.resident(), vec![0, 0]);
}

#[tokio::test]
async fn seeded_sampling_continues_on_the_decode_rank_as_on_one_worker() {
    let mut pd = Harness::new(config(), 2, Some(1));
    let mut agg = Harness::new(config(), 1, None);
    let reqs: Vec<_> = (0..3u32)
        .map(|i| {
            seeded(
                &format!("s{i}"),
                prompt(5 + i as usize, i),
                8,
                1234 + u64::from(i),
            )
        })
        .collect();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for r in &reqs {
        a.push(pd.submit(r.clone()).await);
        b.push(agg.submit(r.clone()).await);
    }
    pd.run_until_idle().await;
    agg.run_until_idle().await;
    for ((a, b), r) in a.iter_mut().zip(&mut b).zip(&reqs) {
        let (ta, tb) = (ended(a).tokens, ended(b).tokens);
        assert_eq!(ta, tb, "{}", r.request_id);
        assert_eq!(ta, expected(r));
    }
}

#[tokio::test]
async fn alternatives_come_with_every_token_from_both_groups() {
    let mut h = Harness::new(config(), 1, Some(1));
    let mut req = greedy("alts", prompt(7, 2), 5);
    req.sampling.top_logprobs = 4;
    let mut rx = h.submit(req.clone()).await;
    h.run_until_idle().await;
    let e = ended(&mut rx);
    assert_eq!(e.tokens, expected(&req));
    for ev in &e.events {
        if let TokenEvent::Token { id, logprob, top } = ev {
            assert_eq!(top.len(), 4, "token {id}");
            assert_eq!(top[0], (*id, *logprob));
        }
    }
}

#[tokio::test]
async fn the_prefill_budget_is_held_only_until_the_hand_over() {
    // A prefill rank holds (prompt + 1) / 4 blocks until the move: with 4 blocks per rank,
    // two 8-token prompts (3 blocks each) fit on one prefill rank only one after another.
    let cfg = SchedulerConfig {
        kv_blocks_per_rank: 4,
        ..config()
    };
    let mut h = Harness::new(cfg, 2, Some(1));
    let reqs = [greedy("a", prompt(8, 1), 3), greedy("b", prompt(8, 2), 3)];
    let mut rxs = Vec::new();
    for r in &reqs {
        rxs.push(h.submit(r.clone()).await);
    }
    h.tick().await;
    assert_eq!(h.waiting(), 1, "the prefill rank is full");
    h.run_until_idle().await;
    for (rx, r) in rxs.iter_mut().zip(&reqs) {
        assert_eq!(ended(rx).tokens, expected(r));
    }
    let Some(prefill) = h.prefill.clone() else {
        panic!("the harness has a prefill group");
    };
    // b prefilled in the step after a's first token: a had moved to decode by then.
    let steps: Vec<(u64, u64)> = prefill
        .ran()
        .iter()
        .map(|c| (c.seq_id, c.step_id))
        .collect();
    assert_eq!(steps, vec![(1, 0), (2, 1)]);
}
