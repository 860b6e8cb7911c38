//! Which requests are traced: a deterministic function of the request id, so that the same
//! ids give the same sample on every run and every router.

/// Traces a fixed fraction of requests, chosen by a hash of the request id.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceSampler {
    fraction: f64,
}

/// Why a sampling fraction is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("--trace-sample: {0} is not a fraction in [0, 1]")]
pub struct SampleFractionError(pub f64);

impl TraceSampler {
    /// `fraction` of requests (0: none, 1: all).
    pub fn new(fraction: f64) -> Result<Self, SampleFractionError> {
        if !(0.0..=1.0).contains(&fraction) {
            return Err(SampleFractionError(fraction));
        }
        Ok(Self { fraction })
    }

    pub fn fraction(&self) -> f64 {
        self.fraction
    }

    /// Whether the request with this id is traced.
    pub fn sampled(&self, request_id: &str) -> bool {
        // 53 high bits as a uniform value in [0, 1): exactly representable, never 1.
        let u = (fnv1a(request_id.as_bytes()) >> 11) as f64 / (1u64 << 53) as f64;
        u < self.fraction
    }
}

/// FNV-1a, 64 bits, with a final avalanche so that ids differing only in their last
/// characters (sequential counters) spread over the whole range. Fixed here rather than taken
/// from `std` because `DefaultHasher` may change between Rust releases.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finaliser.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn edges_and_bad_fractions() {
        let none = TraceSampler::new(0.0).unwrap();
        let all = TraceSampler::new(1.0).unwrap();
        for i in 0..1000 {
            let id = format!("cmpl-{i}");
            assert!(!none.sampled(&id));
            assert!(all.sampled(&id));
        }
        assert!(TraceSampler::new(1.5).is_err());
        assert!(TraceSampler::new(-0.1).is_err());
        assert!(TraceSampler::new(f64::NAN).is_err());
    }

    #[test]
    fn sequential_ids_sample_close_to_the_fraction() {
        let s = TraceSampler::new(0.25).unwrap();
        let n = 20_000;
        let hits = (0..n)
            .filter(|i| s.sampled(&format!("cmpl-18c2f00aa1b2-{i:012}")))
            .count();
        let got = hits as f64 / n as f64;
        assert!((got - 0.25).abs() < 0.02, "sampled {got}");
    }

    proptest! {
        #[test]
        fn deterministic_and_monotone_in_the_fraction(id in ".{0,40}", a in 0.0f64..=1.0, b in 0.0f64..=1.0) {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            let (lo, hi) = (TraceSampler::new(lo).unwrap(), TraceSampler::new(hi).unwrap());
            prop_assert_eq!(lo.sampled(&id), lo.sampled(&id));
            // A request traced at a fraction is traced at every larger one.
            prop_assert!(!lo.sampled(&id) || hi.sampled(&id));
        }
    }
}
