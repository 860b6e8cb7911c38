//! Token sampling: greedy, temperature, top-k and top-p, deterministic for a given seed. The
//! parameters are the API's [`SamplingParams`], the same type the front ends validate and the
//! router forwards.

use moeflow_api::SamplingParams;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One sampled token with the log-probability the model gave it (before temperature and
/// truncation, as OpenAI-compatible servers report it).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub token: u32,
    pub logprob: f32,
    /// The `top_logprobs` most likely tokens and their log-probabilities, most likely first
    /// (ties by token id).
    pub top: Vec<(u32, f32)>,
}

/// A per-sequence sampler with its own random stream.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    seed: u64,
    rng: ChaCha8Rng,
    /// Random draws taken so far; with the seed, the whole state (for moving a sequence).
    draws: u64,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let seed = params.seed.unwrap_or_else(|| rand::rng().random());
        Self {
            params,
            seed,
            rng: ChaCha8Rng::seed_from_u64(seed),
            draws: 0,
        }
    }

    /// The sampler of a sequence that moved from another worker: same seed, `draws` draws
    /// already taken, so the continuation is what the original worker would have sampled.
    pub fn resume(params: SamplingParams, seed: u64, draws: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for _ in 0..draws {
            let _: f32 = rng.random();
        }
        Self {
            params,
            seed,
            rng,
            draws,
        }
    }

    /// `(seed, draws)`: what [`Sampler::resume`] needs.
    pub fn state(&self) -> (u64, u64) {
        (self.seed, self.draws)
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    pub fn sample(&mut self, logits: &[f32]) -> Sample {
        let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let lse = max + logits.iter().map(|&l| (l - max).exp()).sum::<f32>().ln();
        let token = if self.params.temperature == 0.0 {
            argmax(logits)
        } else {
            self.draw(logits)
        };
        Sample {
            token: token as u32,
            logprob: logits.get(token).map_or(f32::NEG_INFINITY, |&l| l - lse),
            top: top_logprobs(logits, lse, self.params.top_logprobs as usize),
        }
    }

    fn draw(&mut self, logits: &[f32]) -> usize {
        let t = self.params.temperature;
        let mut cand: Vec<(usize, f32)> = logits.iter().map(|&l| l / t).enumerate().collect();
        cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if self.params.top_k > 0 {
            cand.truncate(self.params.top_k as usize);
        }
        let m = cand.first().map_or(0.0, |c| c.1);
        let mut probs: Vec<f32> = cand.iter().map(|c| (c.1 - m).exp()).collect();
        let z: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= z);
        if self.params.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, p) in probs.iter().enumerate() {
                acc += p;
                if acc >= self.params.top_p {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
            let z: f32 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= z);
        }
        let u: f32 = self.rng.random();
        self.draws += 1;
        let mut acc = 0.0;
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if u < acc {
                return cand[i].0;
            }
        }
        cand[probs.len().saturating_sub(1)].0
    }
}

/// Index of the largest value; the first one on ties (like `torch.argmax`).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// The `n` largest logits as `(token, logit - lse)`, most likely first, ties by token id; a
/// partial selection, so asking for alternatives costs O(vocab), not a sort of the vocabulary.
fn top_logprobs(logits: &[f32], lse: f32, n: usize) -> Vec<(u32, f32)> {
    if n == 0 {
        return Vec::new();
    }
    let order = |a: &(usize, f32), b: &(usize, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let mut all: Vec<(usize, f32)> = logits.iter().copied().enumerate().collect();
    if all.len() > n {
        all.select_nth_unstable_by(n - 1, order);
        all.truncate(n);
    }
    all.sort_by(order);
    all.into_iter().map(|(t, l)| (t as u32, l - lse)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use moeflow_api::MAX_TOP_LOGPROBS;

    #[test]
    fn greedy_picks_argmax_with_logprob() {
        let mut s = Sampler::new(SamplingParams::greedy());
        let out = s.sample(&[0.0, 2.0, 1.0]);
        assert_eq!(out.token, 1);
        let z = (0f32.exp() + 2f32.exp() + 1f32.exp()).ln();
        assert!((out.logprob - (2.0 - z)).abs() < 1e-6);
        assert!(out.top.is_empty(), "none asked for");
    }

    #[test]
    fn reports_the_most_likely_alternatives() {
        let logits = [0.5, 3.0, -1.0, 3.0, 2.0, 0.0];
        let z = logits.iter().map(|l: &f32| l.exp()).sum::<f32>().ln();
        let mut s = Sampler::new(SamplingParams {
            top_logprobs: 3,
            ..SamplingParams::greedy()
        });
        let out = s.sample(&logits);
        // Ties by token id: 1 before 3.
        let ids: Vec<u32> = out.top.iter().map(|t| t.0).collect();
        assert_eq!(ids, [1, 3, 4]);
        for (t, lp) in &out.top {
            assert!((lp - (logits[*t as usize] - z)).abs() < 1e-6);
        }
        assert_eq!(out.top[0].1, out.logprob);
        // More than the vocabulary: all of it, ordered.
        let all = top_logprobs(&logits, z, 20);
        assert_eq!(all.len(), 6);
        assert!(all.windows(2).all(|w| w[0].1 >= w[1].1));
        let too_many = SamplingParams {
            top_logprobs: MAX_TOP_LOGPROBS + 1,
            ..SamplingParams::greedy()
        };
        assert!(too_many.validate().unwrap_err().contains("top_logprobs"));
    }

    #[test]
    fn same_seed_same_tokens_and_top_k_restricts() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 0.9,
            top_k: 5,
            seed: Some(7),
            top_logprobs: 0,
        };
        let a: Vec<u32> = {
            let mut s = Sampler::new(p.clone());
            (0..20).map(|_| s.sample(&logits).token).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(p);
            (0..20).map(|_| s.sample(&logits).token).collect()
        };
        assert_eq!(a, b);
        let mut sorted: Vec<usize> = (0..50).collect();
        sorted.sort_by(|&x, &y| logits[y].total_cmp(&logits[x]));
        assert!(a.iter().all(|t| sorted[..5].contains(&(*t as usize))));
    }

    #[test]
    fn resumed_sampler_continues_the_stream() {
        let logits: Vec<f32> = (0..30).map(|i| (i as f32 * 0.7).cos()).collect();
        let p = SamplingParams {
            temperature: 0.8,
            top_p: 1.0,
            top_k: 0,
            seed: Some(11),
            top_logprobs: 0,
        };
        let mut a = Sampler::new(p.clone());
        let first: Vec<u32> = (0..3).map(|_| a.sample(&logits).token).collect();
        let (seed, draws) = a.state();
        let mut b = Sampler::resume(p, seed, draws);
        let rest_a: Vec<u32> = (0..5).map(|_| a.sample(&logits).token).collect();
        let rest_b: Vec<u32> = (0..5).map(|_| b.sample(&logits).token).collect();
        assert_eq!(rest_a, rest_b);
        assert_eq!(first.len(), 3);
    }
}
