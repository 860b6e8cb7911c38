//! Goodput: requests per second that met every latency limit given with `--goodput` (vLLM's
//! `ttft:MS tpot:MS e2el:MS`), the throughput a service-level objective actually buys.

use crate::error::LoadgenError;
use crate::record::Success;

/// Limits in milliseconds; `None` means no limit on that metric.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GoodputLimits {
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub e2el_ms: Option<f64>,
}

impl GoodputLimits {
    /// Parses `ttft:200`, `tpot:50`, `e2el:1000`, as separate items or comma-separated.
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Self, LoadgenError> {
        let mut limits = Self::default();
        for spec in items
            .iter()
            .flat_map(|s| s.as_ref().split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let err = |reason: &str| LoadgenError::Goodput {
                spec: spec.to_string(),
                reason: reason.to_string(),
            };
            let (name, value) = spec
                .split_once(':')
                .ok_or_else(|| err("expected NAME:MILLISECONDS"))?;
            let ms: f64 = value
                .trim()
                .parse()
                .map_err(|_| err("the limit is not a number"))?;
            if !ms.is_finite() || ms <= 0.0 {
                return Err(err("the limit must be a positive number of milliseconds"));
            }
            let slot = match name.trim() {
                "ttft" => &mut limits.ttft_ms,
                "tpot" => &mut limits.tpot_ms,
                "e2el" => &mut limits.e2el_ms,
                _ => return Err(err("the metric must be ttft, tpot or e2el")),
            };
            *slot = Some(ms);
        }
        Ok(limits)
    }

    pub fn is_empty(&self) -> bool {
        self.ttft_ms.is_none() && self.tpot_ms.is_none() && self.e2el_ms.is_none()
    }

    /// Whether a completed request met every limit. A limit on a metric the request has no
    /// value for (TTFT of a non-streamed request, TPOT of a one-token output) is not checked,
    /// as in vLLM, where such values count as 0.
    pub fn is_met(&self, s: &Success) -> bool {
        let within = |limit: Option<f64>, value: Option<f64>| match (limit, value) {
            (Some(l), Some(v)) => v <= l,
            _ => true,
        };
        within(self.ttft_ms, s.ttft.map(|d| d.as_secs_f64() * 1e3))
            && within(self.tpot_ms, s.tpot().map(|d| d.as_secs_f64() * 1e3))
            && within(self.e2el_ms, Some(s.e2e.as_secs_f64() * 1e3))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_separate_and_comma_separated_items() {
        let l = GoodputLimits::parse(&["ttft:200", "tpot:50,e2el:1000"]).unwrap();
        assert_eq!(l.ttft_ms, Some(200.0));
        assert_eq!(l.tpot_ms, Some(50.0));
        assert_eq!(l.e2el_ms, Some(1000.0));
        assert!(GoodputLimits::parse::<&str>(&[]).unwrap().is_empty());
    }

    #[test]
    fn rejects_bad_items() {
        for bad in ["ttft", "ttft:x", "ttft:-1", "itl:5", "ttft:inf"] {
            assert!(GoodputLimits::parse(&[bad]).is_err(), "{bad}");
        }
    }
}
