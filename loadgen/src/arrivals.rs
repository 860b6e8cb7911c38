//! When each request is released, as offsets from the start of the run. Precomputing the
//! schedule keeps the arrival process independent of how fast the server answers: a request
//! held back by the concurrency limit does not push the later ones back (as in vLLM).

use std::time::Duration;

use rand::SeedableRng;
use rand_distr::{Distribution, Exp};

use crate::config::RequestRate;

/// Release offsets of `n` requests: all zero for [`RequestRate::Unlimited`], else the partial
/// sums of exponential gaps with mean `1 / rate` (a Poisson process), seeded.
pub fn schedule(n: usize, rate: RequestRate, seed: u64) -> Vec<Duration> {
    match rate {
        RequestRate::Unlimited => vec![Duration::ZERO; n],
        RequestRate::PerSecond(r) => {
            let Ok(exp) = Exp::new(r) else {
                // Only a non-positive or NaN rate gets here; `RequestRate::from_f64` refuses them.
                return vec![Duration::ZERO; n];
            };
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed_a771_7a15);
            let mut t = 0.0f64;
            (0..n)
                .map(|_| {
                    let at = Duration::try_from_secs_f64(t).unwrap_or(Duration::MAX);
                    t += exp.sample(&mut rng);
                    at
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_releases_everything_at_once() {
        assert!(schedule(5, RequestRate::Unlimited, 0)
            .iter()
            .all(|d| d.is_zero()));
    }

    #[test]
    fn poisson_has_the_asked_mean_rate_and_is_seeded() {
        let s = schedule(20_000, RequestRate::PerSecond(50.0), 7);
        assert!(s.windows(2).all(|w| w[0] <= w[1]));
        let rate = (s.len() - 1) as f64 / s[s.len() - 1].as_secs_f64();
        assert!((rate - 50.0).abs() < 2.5, "{rate}");
        assert_eq!(s, schedule(20_000, RequestRate::PerSecond(50.0), 7));
    }
}
