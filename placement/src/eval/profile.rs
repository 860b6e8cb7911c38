//! What a device can do: the numbers the roofline cost and the link times are made of.

use serde::{Deserialize, Serialize};

/// Throughputs of one rank's device and of its links. Planners and the evaluator only ever
/// compare times computed from the same profile, so the absolute values set the point where
/// an expert turns from memory-bound to compute-bound, not the ranking of plans.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceProfile {
    pub name: String,
    /// Dense matrix-multiply throughput, FLOP/s.
    pub flops: f64,
    /// Memory bandwidth for reading expert weights, bytes/s.
    pub mem_bw: f64,
    /// Bandwidth of one rank's link to a rank on the same node, bytes/s.
    pub intra_node_bw: f64,
    /// Bandwidth of one rank's link to a rank on another node, bytes/s.
    pub inter_node_bw: f64,
}

/// Names accepted by [`DeviceProfile::by_name`].
pub const PROFILE_NAMES: &[&str] = &["h100", "cpu"];

impl DeviceProfile {
    /// NVIDIA H100 SXM: 989 TFLOP/s dense BF16, 3.35 TB/s HBM3, 450 GB/s NVLink per
    /// direction, 50 GB/s (one 400 Gb/s NIC per GPU) between nodes.
    pub fn h100() -> Self {
        Self {
            name: "h100".into(),
            flops: 989e12,
            mem_bw: 3.35e12,
            intra_node_bw: 450e9,
            inter_node_bw: 50e9,
        }
    }

    /// A plausible server CPU device, chosen without measuring this machine: 1 TFLOP/s f32
    /// (e.g. 32 cores with two AVX-512 FMA units at 2 GHz, at about half of peak), 100 GB/s
    /// of memory bandwidth (a few DDR5 channels), 10 GB/s between ranks on one host (TCP over
    /// loopback) and 1.25 GB/s between hosts (10 GbE). Replace it with measured numbers when
    /// the ratios matter.
    pub fn cpu() -> Self {
        Self {
            name: "cpu".into(),
            flops: 1e12,
            mem_bw: 100e9,
            intra_node_bw: 10e9,
            inter_node_bw: 1.25e9,
        }
    }

    /// A built-in profile by name (see [`PROFILE_NAMES`]).
    pub fn by_name(name: &str) -> Option<Self> {
        match name {
            "h100" => Some(Self::h100()),
            "cpu" => Some(Self::cpu()),
            _ => None,
        }
    }
}

impl Default for DeviceProfile {
    fn default() -> Self {
        Self::h100()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_to_their_profiles() {
        for &n in PROFILE_NAMES {
            assert_eq!(DeviceProfile::by_name(n).unwrap().name, n);
        }
        assert!(DeviceProfile::by_name("tpu").is_none());
        let h = DeviceProfile::h100();
        assert!(h.intra_node_bw > h.inter_node_bw && h.flops > DeviceProfile::cpu().flops);
    }
}
