//! The fake group's "model": the next token is a pure function of the tokens a sequence has
//! seen and of its sampler's state, so a test can predict every stream, and a sequence whose
//! history or sampler got lost or reordered (a wrong chunk, a broken KV hand-over) produces
//! different tokens.

use moeflow_proto::v1 as pb;

/// Token ids the toy model produces are below this.
pub(crate) const VOCAB: u32 = 1000;

/// A sequence's sampler: its settings and how many random draws it has made.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ToySampler {
    pub sampling: pb::WorkerSampling,
    pub draws: u64,
}

impl ToySampler {
    pub fn new(sampling: pb::WorkerSampling) -> Self {
        Self { sampling, draws: 0 }
    }

    /// Greedy (temperature 0) is a hash of the history; otherwise every draw also mixes in the
    /// seed and the number of earlier draws, as a seeded sampler's stream would.
    pub fn next(&mut self, history: &[u32]) -> u32 {
        let mut h = history
            .iter()
            .fold(0x243f_6a88_85a3_08d3_u64, |h, &t| mix(h ^ u64::from(t)));
        if self.sampling.temperature > 0.0 {
            h = mix(h ^ self.sampling.seed.unwrap_or(0));
            h = mix(h ^ self.draws);
            self.draws += 1;
        }
        (h % u64::from(VOCAB)) as u32
    }
}

fn mix(h: u64) -> u64 {
    let h = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^ (h >> 29)
}

/// The log-probability the toy model reports for its pick, and `k` alternatives, most likely
/// first, the pick at their head.
pub(crate) fn logprobs(token: u32, k: u32) -> (f32, Vec<pb::TokenLogprob>) {
    let top = (0..k)
        .map(|i| pb::TokenLogprob {
            token: (token + i) % VOCAB,
            logprob: -0.5 - i as f32,
        })
        .collect();
    (-0.5, top)
}

/// What one sequence generates without any scheduler: the reference a scheduled stream
/// must equal. Stops after `max_tokens` or at the first of `stop` (included).
pub(crate) fn generate(
    prompt: &[u32],
    sampling: pb::WorkerSampling,
    max_tokens: usize,
    stop: &[u32],
) -> Vec<u32> {
    let mut sampler = ToySampler::new(sampling);
    let mut history = prompt.to_vec();
    let mut out = Vec::new();
    while out.len() < max_tokens {
        let t = sampler.next(&history);
        out.push(t);
        history.push(t);
        if stop.contains(&t) {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeded(seed: u64) -> pb::WorkerSampling {
        pb::WorkerSampling {
            temperature: 0.8,
            top_p: 1.0,
            top_k: 0,
            seed: Some(seed),
            top_logprobs: 0,
        }
    }

    #[test]
    fn history_seed_and_draws_all_change_the_token() {
        let greedy = pb::WorkerSampling::default();
        let a = generate(&[1, 2, 3], greedy, 6, &[]);
        assert_eq!(a, generate(&[1, 2, 3], greedy, 6, &[]));
        assert_ne!(a, generate(&[1, 2, 4], greedy, 6, &[]));
        assert_ne!(
            generate(&[1, 2, 3], seeded(1), 6, &[]),
            generate(&[1, 2, 3], seeded(2), 6, &[])
        );
        let mut fresh = ToySampler::new(seeded(1));
        let mut used = ToySampler::new(seeded(1));
        used.draws = 1;
        assert_ne!(fresh.next(&[9; 8]), used.next(&[9; 8]));
    }

    #[test]
    fn generation_stops_at_a_stop_token() {
        let all = generate(&[5], pb::WorkerSampling::default(), 8, &[]);
        let cut = generate(&[5], pb::WorkerSampling::default(), 8, &[all[2]]);
        assert_eq!(cut, all[..cut.len()].to_vec());
        assert!(cut.len() <= 3);
    }
}
