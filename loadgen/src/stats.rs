//! Summary statistics with numpy's conventions (linear-interpolated percentiles, population
//! standard deviation), so numbers compare with `vllm bench serve` on the same samples.

use std::time::Duration;

/// Mean, median, standard deviation, p90 and p99 of a sample, in milliseconds. An empty sample
/// summarises to zeros, as vLLM reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    pub mean_ms: f64,
    pub median_ms: f64,
    pub std_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    /// Sample size.
    pub count: usize,
}

impl Summary {
    pub fn of_durations<I: IntoIterator<Item = Duration>>(samples: I) -> Self {
        let ms: Vec<f64> = samples.into_iter().map(|d| d.as_secs_f64() * 1e3).collect();
        Self::of_ms(ms)
    }

    pub fn of_ms(mut ms: Vec<f64>) -> Self {
        if ms.is_empty() {
            return Self::default();
        }
        ms.sort_by(f64::total_cmp);
        let n = ms.len() as f64;
        let mean = ms.iter().sum::<f64>() / n;
        let var = ms.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        Self {
            mean_ms: mean,
            median_ms: percentile(&ms, 50.0),
            std_ms: var.sqrt(),
            p90_ms: percentile(&ms, 90.0),
            p99_ms: percentile(&ms, 99.0),
            count: ms.len(),
        }
    }
}

/// The `p`-th percentile of sorted, non-empty values, interpolating linearly between ranks.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let Some(&last) = sorted.last() else {
        return 0.0;
    };
    let rank = (p / 100.0).clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    match (sorted.get(lo), sorted.get(hi)) {
        (Some(&a), Some(&b)) => a + (b - a) * (rank - lo as f64),
        _ => last,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_numpy() {
        // numpy: mean 5.5, median 5.5, std 2.8722813, p90 9.1, p99 9.91
        let s = Summary::of_ms((1..=10).map(f64::from).collect());
        assert!((s.mean_ms - 5.5).abs() < 1e-12);
        assert!((s.median_ms - 5.5).abs() < 1e-12);
        assert!((s.std_ms - 2.872_281_323_269_014_8).abs() < 1e-9);
        assert!((s.p90_ms - 9.1).abs() < 1e-9);
        assert!((s.p99_ms - 9.91).abs() < 1e-9);
        assert_eq!(s.count, 10);
    }

    #[test]
    fn empty_and_single() {
        assert_eq!(Summary::of_ms(vec![]), Summary::default());
        let s = Summary::of_ms(vec![3.0]);
        assert_eq!((s.median_ms, s.p99_ms, s.std_ms), (3.0, 3.0, 0.0));
    }
}
