//! What a generated tensor is (name, shape, distribution) and how its values are drawn.
//!
//! Every tensor's values depend only on the seed, the tensor's name and the position within
//! the tensor: each block of [`BLOCK`] values comes from its own ChaCha8 stream position keyed
//! by the seed, with the stream chosen by a hash of the name. So the values of one tensor do
//! not depend on which other tensors exist or in what order they are generated, and blocks can
//! be drawn in parallel.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

/// Values per independently seeded block.
pub const BLOCK: usize = 1 << 16;

/// How a tensor's values are distributed: `mean + std * N(0, 1)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Init {
    /// Mean of the values.
    pub mean: f32,
    /// Standard deviation of the values (0 gives a constant tensor).
    pub std: f32,
}

/// One tensor of a generated checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    /// The Hugging Face tensor name, e.g. `model.layers.0.mlp.gate.weight`.
    pub name: String,
    /// The shape, outermost dimension first.
    pub shape: Vec<usize>,
    /// The value distribution.
    pub init: Init,
}

impl TensorSpec {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A weight matrix `[out, in]` (a `nn.Linear` weight): normal with std `1/sqrt(in)`, so that
/// activations keep their scale through the layer.
pub fn linear(name: impl Into<String>, out: usize, inp: usize) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        shape: vec![out, inp],
        init: Init {
            mean: 0.0,
            std: fan_in_std(inp),
        },
    }
}

/// A stack of per-expert matrices `[experts, in, out]` as fused checkpoints store them (used
/// as `x @ W`): normal with std `1/sqrt(in)`.
pub fn fused_experts(
    name: impl Into<String>,
    experts: usize,
    inp: usize,
    out: usize,
) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        shape: vec![experts, inp, out],
        init: Init {
            mean: 0.0,
            std: fan_in_std(inp),
        },
    }
}

/// An RMSNorm weight: 1 plus a little noise, so a loader that ignores the weight is caught.
pub fn norm(name: impl Into<String>, dim: usize) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        shape: vec![dim],
        init: Init {
            mean: 1.0,
            std: 0.05,
        },
    }
}

/// A small zero-mean vector (biases such as DeepSeek's `e_score_correction_bias`).
pub fn small(name: impl Into<String>, dim: usize, std: f32) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        shape: vec![dim],
        init: Init { mean: 0.0, std },
    }
}

fn fan_in_std(fan_in: usize) -> f32 {
    1.0 / (fan_in.max(1) as f32).sqrt()
}

/// FNV-1a, 64 bit: a hash of the tensor name that, unlike `std`'s hasher, is guaranteed never
/// to change between Rust releases.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Fills `out` with the values of `spec` starting at element `start` (a multiple of
/// [`BLOCK`]), drawing blocks in parallel.
pub fn fill(spec: &TensorSpec, seed: u64, start: usize, out: &mut [f32]) {
    debug_assert_eq!(start % BLOCK, 0);
    let stream = fnv1a(spec.name.as_bytes());
    let Init { mean, std } = spec.init;
    out.par_chunks_mut(BLOCK)
        .enumerate()
        .for_each(|(i, chunk)| {
            if std == 0.0 {
                chunk.fill(mean);
                return;
            }
            let block = (start / BLOCK + i) as u128;
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(stream);
            // 2^32 words per block is far more than a block of normals consumes.
            rng.set_word_pos(block << 32);
            for v in chunk.iter_mut() {
                let z: f32 = StandardNormal.sample(&mut rng);
                *v = mean + std * z;
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(spec: &TensorSpec, seed: u64) -> Vec<f32> {
        let mut v = vec![0.0; spec.numel()];
        fill(spec, seed, 0, &mut v);
        v
    }

    #[test]
    fn values_depend_on_seed_and_name_only() {
        let a = linear("a.weight", 300, 500);
        let b = linear("b.weight", 300, 500);
        assert_eq!(values(&a, 1), values(&a, 1));
        assert_ne!(values(&a, 1), values(&a, 2));
        assert_ne!(values(&a, 1), values(&b, 1));
    }

    #[test]
    fn blocks_can_be_drawn_separately() {
        let a = linear("x", 3, BLOCK);
        let all = values(&a, 7);
        let mut second = vec![0.0; BLOCK];
        fill(&a, 7, BLOCK, &mut second);
        assert_eq!(&all[BLOCK..2 * BLOCK], &second[..]);
    }

    #[test]
    fn statistics_follow_the_init() {
        let a = linear("w", 256, 256);
        let v = values(&a, 0);
        let n = v.len() as f32;
        let mean = v.iter().sum::<f32>() / n;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / n;
        assert!(mean.abs() < 0.005, "mean {mean}");
        assert!(
            (var.sqrt() - 1.0 / 16.0).abs() < 0.002,
            "std {}",
            var.sqrt()
        );
        let n = values(&norm("n", 1000), 0);
        assert!(n.iter().all(|x| (x - 1.0).abs() < 0.3));
    }
}
