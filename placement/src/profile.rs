//! What a device can do: the numbers the roofline cost and the link times are made of.

use serde::{Deserialize, Serialize};

/// Throughputs of one rank's device and of its links. Planners and the evaluator only ever
/// compare times computed from the same profile, so the absolute values set the point where
/// an expert turns from memory-bound to compute-bound, not the ranking of plans.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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

/// Why a profile described in JSON cannot be used; names the field at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProfileError {
    #[error("device profile: {0}")]
    Json(String),
    #[error("device profile: {field} must be a positive finite number, got {value}")]
    Field { field: &'static str, value: f64 },
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
    /// the ratios matter: `moeflow place profile` measures them (on the 2-core development
    /// VM: 1.8e11 FLOP/s, 2.9e10 B/s, 3.3e9 B/s; BENCHMARKS.md).
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

impl DeviceProfile {
    /// A profile described in JSON with the fields of this type (`name`, `flops`, `mem_bw`,
    /// `intra_node_bw`, `inter_node_bw`; SI units: FLOP/s and bytes/s), for hardware the
    /// built-ins do not cover or for numbers measured on one's own machines. Unknown fields
    /// are refused, so a misspelt one is not silently replaced by nothing.
    pub fn from_json(json: &str) -> Result<Self, ProfileError> {
        let p: Self = serde_json::from_str(json).map_err(|e| ProfileError::Json(e.to_string()))?;
        p.validate()?;
        Ok(p)
    }

    /// Every throughput positive and finite (a zero would make modelled times infinite).
    pub fn validate(&self) -> Result<(), ProfileError> {
        for (field, value) in [
            ("flops", self.flops),
            ("mem_bw", self.mem_bw),
            ("intra_node_bw", self.intra_node_bw),
            ("inter_node_bw", self.inter_node_bw),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(ProfileError::Field { field, value });
            }
        }
        Ok(())
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

    #[test]
    fn json_profiles_round_trip_and_name_the_bad_field() {
        let h = DeviceProfile::h100();
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(DeviceProfile::from_json(&json).unwrap(), h);
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v["mem_bw"] = serde_json::json!(0.0);
        let err = DeviceProfile::from_json(&v.to_string())
            .unwrap_err()
            .to_string();
        assert!(err.contains("mem_bw"), "{err}");
        let typo = json.replace("\"flops\"", "\"flop\"");
        let err = DeviceProfile::from_json(&typo).unwrap_err().to_string();
        assert!(err.contains("flop"), "{err}");
        assert!(DeviceProfile::from_json("[1, 2]").is_err());
    }
}
