//! Device and dtype selection shared by the subcommands that run a model.

use anyhow::bail;
use candle_core::{DType, Device};

#[derive(Debug, Clone, clap::Args)]
pub struct DeviceArgs {
    /// Weights and activations: f32 (default, fastest on CPUs) or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// `cpu`, or `cuda:N` when built with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    device: String,
}

impl DeviceArgs {
    pub fn resolve(&self) -> anyhow::Result<(Device, DType)> {
        let dtype = match self.dtype.as_str() {
            "f32" => DType::F32,
            "bf16" => DType::BF16,
            "f16" => DType::F16,
            other => bail!("--dtype: unknown dtype `{other}` (f32, bf16, f16)"),
        };
        let device = match self.device.as_str() {
            "cpu" => Device::Cpu,
            d if d.starts_with("cuda") => {
                let ordinal: usize = d
                    .strip_prefix("cuda:")
                    .unwrap_or("0")
                    .parse()
                    .map_err(|_| anyhow::anyhow!("--device: bad CUDA ordinal in `{d}`"))?;
                Device::new_cuda(ordinal)?
            }
            other => bail!("--device: unknown device `{other}` (cpu, cuda:N)"),
        };
        Ok((device, dtype))
    }
}
