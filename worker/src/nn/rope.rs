//! Rotary position embeddings applied in place to f32 rows.

use crate::config::RopeConfig;

/// Which elements form a rotated pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// `(i, i + d/2)`: Qwen, GPT-NeoX (transformers' `rotate_half`).
    Half,
    /// `(2i, 2i + 1)`: Llama-4's complex-number form, DeepSeek's `rope_interleave`.
    Interleaved,
}

/// Precomputed inverse frequencies for one rotary dimension.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
    attention_factor: f32,
    style: RopeStyle,
}

impl Rope {
    pub fn new(cfg: &RopeConfig, rot_dim: usize, style: RopeStyle) -> Self {
        let (inv_freq, attention_factor) = cfg.inv_freq(rot_dim);
        Self {
            inv_freq,
            attention_factor,
            style,
        }
    }

    pub fn rot_dim(&self) -> usize {
        self.inv_freq.len() * 2
    }

    /// Rotates `rows` (each `row_len` long, `heads` heads of `head_stride` elements, the rotary
    /// part starting at `offset` within a head) for the token positions `positions`
    /// (one per row).
    pub fn apply(
        &self,
        rows: &mut [f32],
        row_len: usize,
        heads: usize,
        head_stride: usize,
        offset: usize,
        positions: impl Iterator<Item = usize>,
    ) {
        let half = self.inv_freq.len();
        let mut cos = vec![0f32; half];
        let mut sin = vec![0f32; half];
        for (row, pos) in rows.chunks_exact_mut(row_len).zip(positions) {
            let p = pos as f32;
            for i in 0..half {
                // Angle in f32 like the reference (`inv_freq @ position` in float32).
                let a = self.inv_freq[i] * p;
                cos[i] = a.cos() * self.attention_factor;
                sin[i] = a.sin() * self.attention_factor;
            }
            for h in 0..heads {
                let x = &mut row[h * head_stride + offset..h * head_stride + offset + 2 * half];
                match self.style {
                    RopeStyle::Half => {
                        for i in 0..half {
                            let (a, b) = (x[i], x[i + half]);
                            x[i] = a * cos[i] - b * sin[i];
                            x[i + half] = b * cos[i] + a * sin[i];
                        }
                    }
                    RopeStyle::Interleaved => {
                        for i in 0..half {
                            let (a, b) = (x[2 * i], x[2 * i + 1]);
                            x[2 * i] = a * cos[i] - b * sin[i];
                            x[2 * i + 1] = b * cos[i] + a * sin[i];
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RopeConfig, RopeScaling};

    fn rope(style: RopeStyle) -> Rope {
        let cfg = RopeConfig {
            theta: 10_000.0,
            scaling: RopeScaling::None,
        };
        Rope::new(&cfg, 8, style)
    }

    #[test]
    fn position_zero_is_identity_and_norm_is_kept() {
        for style in [RopeStyle::Half, RopeStyle::Interleaved] {
            let r = rope(style);
            let orig: Vec<f32> = (0..16).map(|i| i as f32 * 0.1 - 0.7).collect();
            let mut x = orig.clone();
            r.apply(&mut x, 16, 2, 8, 0, [0usize].into_iter());
            assert_eq!(x, orig);
            r.apply(&mut x, 16, 2, 8, 0, [37usize].into_iter());
            let n0: f32 = orig.iter().map(|v| v * v).sum();
            let n1: f32 = x.iter().map(|v| v * v).sum();
            assert!((n0 - n1).abs() < 1e-4);
        }
    }

    #[test]
    fn dot_product_depends_only_on_relative_position() {
        let r = rope(RopeStyle::Half);
        let q0: Vec<f32> = (0..8).map(|i| (i as f32).sin()).collect();
        let k0: Vec<f32> = (0..8).map(|i| (i as f32).cos()).collect();
        let dot_at = |pq: usize, pk: usize| {
            let (mut q, mut k) = (q0.clone(), k0.clone());
            r.apply(&mut q, 8, 1, 8, 0, [pq].into_iter());
            r.apply(&mut k, 8, 1, 8, 0, [pk].into_iter());
            q.iter().zip(&k).map(|(a, b)| a * b).sum::<f32>()
        };
        assert!((dot_at(10, 3) - dot_at(27, 20)).abs() < 1e-4);
    }
}
