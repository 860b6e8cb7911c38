//! Device and dtype selection shared by the subcommands that run a model.
//!
//! Parsing, the dtype default and opening the device are separate steps, so that the rules
//! a GPU user depends on (what `cuda:N` means, which dtype a GPU gets, what a CPU-only build
//! says when asked for a GPU) are tested on machines without one.

use anyhow::{bail, Context};
use candle_core::{DType, Device};

/// Weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DtypeArg {
    /// f32 on a CPU (faster than bf16 on CPUs without native bf16 arithmetic), bf16 on a GPU.
    Auto,
    F32,
    Bf16,
    F16,
}

#[derive(Debug, Clone, clap::Args)]
pub struct DeviceArgs {
    /// Weights and activations; `auto` is f32 on a CPU and bf16 on a GPU.
    #[arg(long, value_enum, default_value_t = DtypeArg::Auto)]
    dtype: DtypeArg,
    /// `cpu`, or `cuda:N` (`cuda` is `cuda:0`) in a build with the `cuda` feature.
    #[arg(long, default_value = "cpu", value_parser = DeviceKind::parse)]
    device: DeviceKind,
}

/// Where a model runs, before anything is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
    Cuda(usize),
}

impl DeviceKind {
    /// `cpu`, `cuda` or `cuda:N`; the error names `--device` and the accepted forms.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            d => match d.strip_prefix("cuda:") {
                Some(n) => n
                    .parse()
                    .map(Self::Cuda)
                    .map_err(|_| format!("bad CUDA ordinal in `{d}` (expected cuda:N, N >= 0)")),
                None => Err(format!("unknown device `{d}` (expected cpu or cuda:N)")),
            },
        }
    }

    /// The dtype `--dtype auto` picks: f32 on CPUs (this crate's f32 kernels are the fast
    /// path there), bf16 on GPUs (half the bytes to stream, tensor cores).
    pub fn default_dtype(self) -> DType {
        match self {
            Self::Cpu => DType::F32,
            Self::Cuda(_) => DType::BF16,
        }
    }

    /// Opens the device: a clear error, never a panic, on a CPU-only build or a machine
    /// without the GPU asked for.
    pub fn open(self) -> anyhow::Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(n) => open_cuda(n),
        }
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize) -> anyhow::Result<Device> {
    // cudarc can panic on a broken driver installation; report it like any other failure.
    match std::panic::catch_unwind(|| Device::new_cuda(ordinal)) {
        Ok(Ok(d)) => Ok(d),
        Ok(Err(e)) => Err(e).with_context(|| {
            format!("--device cuda:{ordinal}: cannot open the GPU (is there an NVIDIA GPU with that ordinal and a working driver?)")
        }),
        Err(_) => bail!("--device cuda:{ordinal}: the CUDA driver failed while opening the GPU"),
    }
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(ordinal: usize) -> anyhow::Result<Device> {
    bail!(
        "--device cuda:{ordinal}: this moeflow was built without the `cuda` feature; build it \
         with `cargo build --release --features cuda,nccl` on a machine with the CUDA toolkit"
    )
}

impl DeviceArgs {
    pub fn resolve(&self) -> anyhow::Result<(Device, DType)> {
        let dtype = match self.dtype {
            DtypeArg::Auto => self.device.default_dtype(),
            DtypeArg::F32 => DType::F32,
            DtypeArg::Bf16 => DType::BF16,
            DtypeArg::F16 => DType::F16,
        };
        Ok((self.device.open().context("--device")?, dtype))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse_and_bad_ones_say_what_is_accepted() {
        assert_eq!(DeviceKind::parse("cpu"), Ok(DeviceKind::Cpu));
        assert_eq!(DeviceKind::parse("cuda"), Ok(DeviceKind::Cuda(0)));
        assert_eq!(DeviceKind::parse("cuda:3"), Ok(DeviceKind::Cuda(3)));
        let e = DeviceKind::parse("cuda:x").unwrap_err();
        assert!(e.contains("cuda:N"), "{e}");
        let e = DeviceKind::parse("tpu:0").unwrap_err();
        assert!(e.contains("cpu or cuda:N"), "{e}");
        assert!(DeviceKind::parse("cuda:-1").is_err());
    }

    #[test]
    fn cpus_default_to_f32_and_gpus_to_bf16() {
        assert_eq!(DeviceKind::Cpu.default_dtype(), DType::F32);
        assert_eq!(DeviceKind::Cuda(1).default_dtype(), DType::BF16);
        let args = DeviceArgs {
            dtype: DtypeArg::Auto,
            device: DeviceKind::Cpu,
        };
        let (device, dtype) = args.resolve().unwrap();
        assert!(device.is_cpu());
        assert_eq!(dtype, DType::F32);
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_gpu_asked_of_a_cpu_only_build_is_a_clear_error() {
        let e = DeviceKind::Cuda(0).open().unwrap_err().to_string();
        assert!(e.contains("without the `cuda` feature"), "{e}");
        let args = DeviceArgs {
            dtype: DtypeArg::Bf16,
            device: DeviceKind::Cuda(0),
        };
        let e = format!("{:#}", args.resolve().unwrap_err());
        assert!(e.contains("--device"), "{e}");
    }

    /// A CUDA build on a machine without a GPU (CI's compile-only check never runs tests,
    /// but a GPU user's laptop might): an error, not a panic.
    #[cfg(feature = "cuda")]
    #[test]
    fn a_missing_gpu_is_an_error_not_a_panic() {
        if let Err(e) = DeviceKind::Cuda(999).open() {
            assert!(format!("{e:#}").contains("cuda:999"), "{e:#}");
        }
    }
}
