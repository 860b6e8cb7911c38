//! Building blocks shared by the architectures: linear maps, RMSNorm, SwiGLU feed-forward,
//! rotary embeddings and attention over the block KV cache.

pub mod attention;
pub(crate) mod kernels;
pub mod rope;

use candle_core::{DType, Tensor, D};

use crate::error::Result;
use crate::weights::{WeightStore, WeightsError};

/// `y = x W^T` with `W` stored as published (`[out, in]`).
#[derive(Debug, Clone)]
pub struct Linear {
    w: Tensor,
}

impl Linear {
    pub fn load(
        ws: &WeightStore,
        name: &str,
        out_dim: usize,
        in_dim: usize,
    ) -> Result<Self, WeightsError> {
        Ok(Self {
            w: ws.get(&format!("{name}.weight"), &[out_dim, in_dim])?,
        })
    }

    pub fn from_weight(w: Tensor) -> Self {
        Self { w }
    }

    pub fn out_dim(&self) -> usize {
        self.w.dims()[0]
    }

    pub fn weight(&self) -> &Tensor {
        &self.w
    }

    /// `x`: `[tokens, in]` → `[tokens, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // f32 on CPU: split the output columns over the threads (see `kernels`), which at one
        // token is what uses the whole memory bandwidth.
        if let Some(y) = kernels::linear(x, &self.w) {
            return Ok(Tensor::from_vec(
                y,
                (x.dims()[0], self.w.dims()[0]),
                x.device(),
            )?);
        }
        Ok(x.matmul(&self.w.t()?)?)
    }
}

/// Root-mean-square normalisation over the last dimension, computed in f32 like the reference.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    w: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub fn load(ws: &WeightStore, name: &str, dim: usize, eps: f64) -> Result<Self, WeightsError> {
        Ok(Self {
            w: ws.get_as(&format!("{name}.weight"), &[dim], DType::F32)?,
            eps: eps as f32,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        let y = candle_nn::ops::rms_norm(&xf.contiguous()?, &self.w, self.eps)?;
        Ok(y.to_dtype(dtype)?)
    }

    /// Normalises consecutive rows of `rows` (each as long as the weight) in place: the f32
    /// path of attention, which keeps q and k as plain rows between the projections and the
    /// cache. Same arithmetic as `candle_nn::ops::rms_norm` (sequential sum of squares,
    /// `x / sqrt(mean + eps) * w`).
    pub(crate) fn forward_rows_f32(&self, rows: &mut [f32]) -> Result<()> {
        let Some(w) = kernels::F32Guard::new(&self.w) else {
            // Weights off the CPU: through candle and back.
            let dim = self.w.dims().first().copied().unwrap_or(1).max(1);
            let t = Tensor::from_slice(rows, (rows.len() / dim, dim), self.w.device())?;
            let y = self.forward(&t)?.flatten_all()?.to_vec1::<f32>()?;
            rows.copy_from_slice(&y);
            return Ok(());
        };
        let w = w.slice();
        if w.is_empty() || !rows.len().is_multiple_of(w.len()) {
            return Err(crate::error::ModelError::Input(format!(
                "rms norm: {} values are not rows of {}",
                rows.len(),
                w.len()
            )));
        }
        let n = w.len() as f32;
        for row in rows.chunks_exact_mut(w.len()) {
            let sum2: f32 = row.iter().map(|v| v * v).sum();
            let m = (sum2 / n + self.eps).sqrt();
            for (v, a) in row.iter_mut().zip(w) {
                *v = *v / m * a;
            }
        }
        Ok(())
    }
}

/// L2 normalisation without a weight (Llama-4's q/k norm): `x / sqrt(mean(x^2) + eps)`.
pub fn l2_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let ms = xf.sqr()?.mean_keepdim(D::Minus1)?;
    let y = xf.broadcast_div(&(ms + eps)?.sqrt()?)?;
    Ok(y.to_dtype(dtype)?)
}

/// A SwiGLU feed-forward block, `down(silu(gate(x)) * up(x))`: dense MLPs, shared experts and
/// routed experts all have this form.
///
/// Weights are stored input-major (`gate_up: [hidden, 2F]`, gate columns first; `down:
/// [F, hidden]`) so that one matmul computes gate and up together, whatever layout the
/// checkpoint used.
#[derive(Debug, Clone)]
pub struct SwiGlu {
    gate_up: Tensor,
    down: Tensor,
    ffn: usize,
}

impl SwiGlu {
    /// Loads `{prefix}.gate_proj/up_proj/down_proj.weight` (`[F, H]`, `[F, H]`, `[H, F]`).
    pub fn load_split(
        ws: &WeightStore,
        prefix: &str,
        hidden: usize,
        ffn: usize,
    ) -> Result<Self, WeightsError> {
        // Straight into the input-major layout, one allocation per weight (see
        // `WeightStore::get_stacked_transposed`).
        let (gate, up, down) = (
            format!("{prefix}.gate_proj.weight"),
            format!("{prefix}.up_proj.weight"),
            format!("{prefix}.down_proj.weight"),
        );
        let gate_up = ws.get_stacked_transposed(&[&gate, &up], ffn, hidden)?;
        let down = ws.get_stacked_transposed(&[&down], hidden, ffn)?;
        Ok(Self { gate_up, down, ffn })
    }

    /// From input-major tensors: `gate_up: [H, 2F]` (gate first) and `down: [F, H]`.
    pub fn from_input_major(gate_up: Tensor, down: Tensor) -> Result<Self> {
        let ffn = down.dims()[0];
        Ok(Self {
            gate_up: gate_up.contiguous()?,
            down: down.contiguous()?,
            ffn,
        })
    }

    pub fn ffn(&self) -> usize {
        self.ffn
    }

    pub fn gate_up(&self) -> &Tensor {
        &self.gate_up
    }

    pub fn down(&self) -> &Tensor {
        &self.down
    }

    /// Number of weight bytes (for accounting and bandwidth roofline).
    pub fn bytes(&self) -> usize {
        (self.gate_up.elem_count() + self.down.elem_count()) * self.gate_up.dtype().size_in_bytes()
    }

    /// The weights borrowed as f32 slices (`gate_up`, `down`), when they are f32 in CPU
    /// memory with the shapes the fast kernels assume; `None` sends callers to candle ops.
    pub(crate) fn f32_weights(&self) -> Option<(kernels::F32Guard<'_>, kernels::F32Guard<'_>)> {
        let hidden = self.gate_up.dims().first().copied()?;
        if self.gate_up.dims() != [hidden, 2 * self.ffn] || self.down.dims() != [self.ffn, hidden] {
            return None;
        }
        Some((
            kernels::F32Guard::new(&self.gate_up)?,
            kernels::F32Guard::new(&self.down)?,
        ))
    }

    /// `x`: `[tokens, hidden]` → `[tokens, hidden]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let &[t, hidden] = x.dims() {
            if hidden == self.gate_up.dims()[0] {
                let fast = kernels::with_f32(x, |xs| {
                    let (gate_up, down) = self.f32_weights()?;
                    let ffn = kernels::SwiGluRef {
                        gate_up: gate_up.slice(),
                        down: down.slice(),
                    };
                    let groups = [kernels::GroupWork { ffn, rows: 0..t }];
                    Some(kernels::grouped_swiglu(xs, &groups, hidden, self.ffn, None).into_inner())
                })
                .flatten();
                if let Some(y) = fast {
                    return Ok(Tensor::from_vec(y, (t, hidden), x.device())?);
                }
            }
        }
        let h = x.matmul(&self.gate_up)?;
        let g = h.narrow(1, 0, self.ffn)?.silu()?;
        let u = h.narrow(1, self.ffn, self.ffn)?;
        Ok((g * u)?.matmul(&self.down)?)
    }
}
