//! Batch building: the chunks of one group's next step.
//!
//! Every running sequence on the group whose prompt is done gets one decode token (its last
//! sampled one); sequences still in their prompt get the next prompt chunk while the step's
//! prefill token budget lasts (chunked prefill), in admission order. The first chunk of a
//! sequence carries its sampling settings; the last prompt chunk asks for a sample.

use std::collections::HashMap;

use moeflow_proto::v1 as pb;

use super::sequence::{Role, Running};
use moeflow_api::SamplingParams;

/// A request's sampling settings as its rank's sampler takes them.
pub(crate) fn worker_sampling(s: &SamplingParams) -> pb::WorkerSampling {
    pb::WorkerSampling {
        temperature: s.temperature,
        top_p: s.top_p,
        top_k: s.top_k,
        seed: s.seed,
        top_logprobs: s.top_logprobs,
    }
}

/// The chunks for the ranks of the group `role` (`world` ranks), taking prompt tokens out of
/// `budget`. Marks what it sends as sent (prefill progress, sampling settings).
pub(super) fn build(
    running: &mut HashMap<u64, Running>,
    role: Role,
    world: usize,
    budget: &mut usize,
) -> Vec<Vec<pb::SeqChunk>> {
    let mut per_rank: Vec<Vec<pb::SeqChunk>> = vec![Vec::new(); world];
    let mut seqs: Vec<u64> = running
        .iter()
        .filter(|(_, r)| r.at.0 == role)
        .map(|(s, _)| *s)
        .collect();
    // Sequence ids grow with admission: older requests prefill first.
    seqs.sort_unstable();
    for seq in seqs {
        let Some(r) = running.get_mut(&seq) else {
            continue;
        };
        let Some(chunk) = next_chunk(seq, r, budget) else {
            continue;
        };
        if let Some(rank) = per_rank.get_mut(r.at.1) {
            rank.push(chunk);
        }
    }
    per_rank
}

/// The sequence's next chunk, or None when it has nothing to run this step (out of prompt
/// budget, or nothing sampled yet to feed back).
fn next_chunk(seq: u64, r: &mut Running, budget: &mut usize) -> Option<pb::SeqChunk> {
    let plen = r.req.prompt.len();
    let sampling = (!r.sampling_sent).then(|| worker_sampling(&r.req.sampling));
    let chunk = if r.prefilled < plen {
        if *budget == 0 {
            return None;
        }
        let take = (plen - r.prefilled).min(*budget);
        *budget -= take;
        let c = pb::SeqChunk {
            seq_id: seq,
            tokens: r.req.prompt[r.prefilled..r.prefilled + take].to_vec(),
            start: r.prefilled as u32,
            prompt: true,
            sampling,
            sample: r.prefilled + take == plen,
            trace: r.trace.is_some(),
        };
        r.prefilled += take;
        c
    } else {
        let &last = r.generated.last()?;
        pb::SeqChunk {
            seq_id: seq,
            tokens: vec![last],
            start: (plen + r.generated.len() - 1) as u32,
            prompt: false,
            sampling,
            sample: true,
            trace: r.trace.is_some(),
        }
    };
    r.sampling_sent = true;
    Some(chunk)
}
