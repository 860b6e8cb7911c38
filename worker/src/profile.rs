//! Measures the two device numbers the placement cost model's roofline is made of, with the
//! kernels serving runs: how fast routed experts multiply (compute-bound, many tokens per
//! expert) and how fast they stream their weights (memory-bound, one token per expert).
//!
//! The built-in device profiles are datasheet figures; a planner's choice between
//! layouts turns on where an expert stops being memory-bound, which on a CPU depends on the
//! kernels and the machine far more than on any datasheet. `moeflow place profile` runs this
//! on the machine a rank will run on and writes the result as a device profile.

use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};

use crate::moe::{Assignment, LayerExperts, WeightApplication};
use crate::nn::SwiGlu;
use crate::{ModelError, Result};

/// What to run. The defaults make 12 experts of 2048 x 1024 (25 MB each in f32, 302 MB in
/// all, well past any last-level cache) so the one-token pass reads weights from memory, and
/// a 1024-token pass over 4 experts (256 rows each, where the grouped kernel runs gemm at
/// full speed).
#[derive(Debug, Clone, PartialEq)]
pub struct ComputeProbe {
    /// Model (hidden) width of the probe's experts.
    pub hidden_size: usize,
    /// Intermediate width of one expert.
    pub intermediate_size: usize,
    /// Experts the memory pass reads, one token each.
    pub experts: usize,
    /// Rows of the compute pass, spread evenly over `compute_experts` experts.
    pub tokens: usize,
    pub compute_experts: usize,
    /// Timed repetitions of each pass; the median is reported.
    pub repeats: usize,
}

impl Default for ComputeProbe {
    fn default() -> Self {
        Self {
            hidden_size: 2048,
            intermediate_size: 1024,
            experts: 12,
            tokens: 1024,
            compute_experts: 4,
            repeats: 7,
        }
    }
}

impl ComputeProbe {
    /// Every size positive, the compute experts among those built.
    pub fn validate(&self) -> Result<()> {
        for (field, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("experts", self.experts),
            ("tokens", self.tokens),
            ("compute_experts", self.compute_experts),
            ("repeats", self.repeats),
        ] {
            if v == 0 {
                return Err(ModelError::Input(format!(
                    "profile probe: {field} must be > 0"
                )));
            }
        }
        if self.compute_experts > self.experts {
            return Err(ModelError::Input(format!(
                "profile probe: compute_experts ({}) exceeds experts ({})",
                self.compute_experts, self.experts
            )));
        }
        Ok(())
    }

    /// Bytes of one expert's weights in `dtype` (gate, up and down projections).
    pub fn expert_bytes(&self, dtype: DType) -> f64 {
        (3 * self.hidden_size * self.intermediate_size * dtype.size_in_bytes()) as f64
    }

    /// Multiply-adds of one token through one expert, counted as 2 FLOPs each (the cost
    /// model's `ExpertShape::flops_per_token`).
    pub fn flops_per_token(&self) -> f64 {
        6.0 * self.hidden_size as f64 * self.intermediate_size as f64
    }
}

/// The measured rates, with every repetition kept so a reader can judge the spread.
#[derive(Debug, Clone, PartialEq)]
pub struct ComputeThroughput {
    /// Median FLOP/s of the compute pass.
    pub flops: f64,
    /// Median bytes/s of expert weights streamed by the memory pass.
    pub mem_bw: f64,
    pub flops_runs: Vec<f64>,
    pub mem_bw_runs: Vec<f64>,
}

/// Builds the probe's experts from random weights on `device` in `dtype` and times both
/// passes (after one untimed warm-up of each, which also faults the pages in).
pub fn measure(probe: &ComputeProbe, device: &Device, dtype: DType) -> Result<ComputeThroughput> {
    probe.validate()?;
    let (h, f) = (probe.hidden_size, probe.intermediate_size);
    let mut layer = LayerExperts::new(0, probe.experts, h);
    for e in 0..probe.experts as u32 {
        let gate_up = random(h, 2 * f, h, device, dtype)?;
        let down = random(f, h, f, device, dtype)?;
        layer.insert(e, SwiGlu::from_input_major(gate_up, down)?);
    }
    let x = random(probe.tokens, h, 1, device, dtype)?;

    // Memory pass: one token through every expert, so each expert's weights are read once.
    let one = x.narrow(0, 0, 1)?;
    let all: Vec<Assignment> = (0..probe.experts as u32)
        .map(|expert| Assignment {
            row: 0,
            expert,
            weight: 1.0,
        })
        .collect();
    let mem_bytes = probe.expert_bytes(dtype) * probe.experts as f64;
    let mem_bw_runs = timed(probe.repeats, || {
        layer.compute(&one, &all, WeightApplication::Output, 1)
    })?
    .into_iter()
    .map(|t| mem_bytes / t.as_secs_f64())
    .collect::<Vec<_>>();

    // Compute pass: every row to one of the first `compute_experts` experts.
    let rows: Vec<Assignment> = (0..probe.tokens as u32)
        .map(|row| Assignment {
            row,
            expert: row % probe.compute_experts as u32,
            weight: 1.0,
        })
        .collect();
    let flop = probe.flops_per_token() * probe.tokens as f64;
    let flops_runs = timed(probe.repeats, || {
        layer.compute(&x, &rows, WeightApplication::Output, probe.tokens)
    })?
    .into_iter()
    .map(|t| flop / t.as_secs_f64())
    .collect::<Vec<_>>();

    Ok(ComputeThroughput {
        flops: median(&flops_runs),
        mem_bw: median(&mem_bw_runs),
        flops_runs,
        mem_bw_runs,
    })
}

/// Normal weights with standard deviation `1 / sqrt(fan_in)` (activations stay O(1), so no
/// denormals slow the kernels down).
fn random(
    rows: usize,
    cols: usize,
    fan_in: usize,
    device: &Device,
    dtype: DType,
) -> Result<Tensor> {
    let t = Tensor::randn(0f32, 1.0 / (fan_in as f32).sqrt(), (rows, cols), device)?;
    Ok(t.to_dtype(dtype)?)
}

/// Runs `f` once untimed, then `repeats` times timed; each run waits for the device (the
/// result is brought to the host), so asynchronous devices are timed to completion.
fn timed(repeats: usize, mut f: impl FnMut() -> Result<Tensor>) -> Result<Vec<Duration>> {
    f()?.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
    (0..repeats)
        .map(|_| {
            let start = Instant::now();
            let out = f()?;
            out.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
            Ok(start.elapsed().max(Duration::from_nanos(1)))
        })
        .collect()
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ComputeProbe {
        ComputeProbe {
            hidden_size: 64,
            intermediate_size: 32,
            experts: 3,
            tokens: 16,
            compute_experts: 2,
            repeats: 3,
        }
    }

    #[test]
    fn measures_positive_rates_with_every_run_kept() {
        let t = measure(&tiny(), &Device::Cpu, DType::F32).unwrap();
        assert_eq!(t.flops_runs.len(), 3);
        assert_eq!(t.mem_bw_runs.len(), 3);
        for v in t.flops_runs.iter().chain(&t.mem_bw_runs) {
            assert!(v.is_finite() && *v > 0.0, "{t:?}");
        }
        assert!(
            t.flops_runs.contains(&t.flops),
            "median of an odd count is a run"
        );
        assert!(t.mem_bw_runs.contains(&t.mem_bw));
    }

    #[test]
    fn refuses_probes_it_cannot_run() {
        let mut p = tiny();
        p.tokens = 0;
        let e = measure(&p, &Device::Cpu, DType::F32).unwrap_err();
        assert!(e.to_string().contains("tokens"), "{e}");
        let mut p = tiny();
        p.compute_experts = 4;
        let e = p.validate().unwrap_err();
        assert!(e.to_string().contains("compute_experts"), "{e}");
    }

    #[test]
    fn counts_bytes_and_flops_like_the_cost_model() {
        let p = tiny();
        assert_eq!(p.expert_bytes(DType::F32), (3 * 64 * 32 * 4) as f64);
        assert_eq!(p.expert_bytes(DType::BF16), (3 * 64 * 32 * 2) as f64);
        assert_eq!(p.flops_per_token(), 6.0 * 64.0 * 32.0);
        assert_eq!(median(&[3.0, 1.0, 2.0, 10.0]), 2.5);
    }
}
