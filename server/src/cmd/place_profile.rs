//! `moeflow place profile`: measures this machine's device profile (the roofline numbers
//! `place plan|eval|compare --profile FILE` take) with the kernels and the comm backend that
//! serving uses, instead of trusting a datasheet.

use std::path::PathBuf;

use anyhow::Context;
use moeflow_placement::eval::DeviceProfile;
use moeflow_worker::profile::{self, ComputeProbe};

use super::device::DeviceArgs;

#[derive(Debug, clap::Args)]
pub struct ProfileArgs {
    /// Write the profile (JSON, the format `--profile FILE` reads) here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The profile's name.
    #[arg(long, default_value = "measured")]
    pub name: String,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Hidden size of the probe's experts.
    #[arg(long, default_value_t = 2048)]
    pub hidden_size: usize,
    /// Intermediate size of the probe's experts.
    #[arg(long, default_value_t = 1024)]
    pub intermediate_size: usize,
    /// Experts the memory pass streams (one token each); their weights should exceed the
    /// last-level cache several times.
    #[arg(long, default_value_t = 12)]
    pub experts: usize,
    /// Rows of the compute pass (spread over 4 experts, or fewer if `--experts` is lower).
    #[arg(long, default_value_t = 1024)]
    pub tokens: usize,
    /// Timed repetitions of each measurement (the median is kept).
    #[arg(long, default_value_t = 7)]
    pub repeats: usize,
    /// Bytes of one transfer in the link measurement (activations of a dispatch are a few
    /// MB).
    #[arg(long, default_value_t = 4 << 20)]
    pub link_bytes: usize,
    /// Bytes/s between nodes: one host cannot measure it, so it is taken as given (default
    /// 10 GbE).
    #[arg(long, default_value_t = 1.25e9)]
    pub inter_node_bw: f64,
}

pub fn profile(a: ProfileArgs) -> anyhow::Result<()> {
    if !(a.inter_node_bw.is_finite() && a.inter_node_bw > 0.0) {
        anyhow::bail!(
            "--inter-node-bw: inter_node_bw must be a positive finite number, got {}",
            a.inter_node_bw
        );
    }
    let (device, dtype) = a.device.resolve()?;
    let probe = ComputeProbe {
        hidden_size: a.hidden_size,
        intermediate_size: a.intermediate_size,
        experts: a.experts,
        tokens: a.tokens,
        compute_experts: a.experts.min(4),
        repeats: a.repeats,
    };
    let compute =
        profile::measure(&probe, &device, dtype).context("measuring the expert kernels")?;
    let link = moeflow_comm::probe::tcp_loopback_bandwidth(a.link_bytes, a.repeats)
        .context("measuring the TCP link between two local ranks")?;
    let p = DeviceProfile {
        name: a.name,
        flops: compute.flops,
        mem_bw: compute.mem_bw,
        intra_node_bw: link.bandwidth,
        inter_node_bw: a.inter_node_bw,
    };
    p.validate().context("a measured rate is not usable")?;
    let spread = |v: &[f64]| {
        let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = v.iter().cloned().fold(0.0, f64::max);
        format!("{lo:.3e} - {hi:.3e}")
    };
    println!("| field | value | how | runs (min - max) |");
    println!("|---|---|---|---|");
    println!(
        "| flops | {:.3e} FLOP/s | {} tokens over {} experts of {}x{} ({dtype:?}) | {} |",
        p.flops,
        probe.tokens,
        probe.compute_experts,
        probe.hidden_size,
        probe.intermediate_size,
        spread(&compute.flops_runs)
    );
    println!(
        "| mem_bw | {:.3e} B/s | 1 token through {} experts ({:.0} MB of weights) | {} |",
        p.mem_bw,
        probe.experts,
        probe.expert_bytes(dtype) * probe.experts as f64 / 1e6,
        spread(&compute.mem_bw_runs)
    );
    println!(
        "| intra_node_bw | {:.3e} B/s | TCP, 2 ranks on loopback, {} bytes to the peer and its ack | {} |",
        p.intra_node_bw,
        a.link_bytes,
        spread(&link.runs)
    );
    println!(
        "| inter_node_bw | {:.3e} B/s | given (--inter-node-bw) | - |",
        p.inter_node_bw
    );
    let ridge = p.flops / p.mem_bw * probe.expert_bytes(dtype) / probe.flops_per_token();
    println!("\nAn expert of this shape turns compute-bound at about {ridge:.0} tokens per step.");
    if let Some(out) = a.out {
        let json = serde_json::to_string_pretty(&p)?;
        std::fs::write(&out, json + "\n").with_context(|| format!("--out {}", out.display()))?;
    }
    Ok(())
}
