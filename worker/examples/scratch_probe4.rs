use moeflow_worker::kv_cache::{KvCache, KvCacheConfig};
use moeflow_worker::nn::attention::{attend, AttnMask, AttnShape};
use std::time::Instant;
fn main() {
    let (layers, seqs, ctx, nh, nkv, d) = (8usize, 16u64, 190usize, 8usize, 4usize, 64usize);
    let mut kv = KvCache::new(KvCacheConfig {
        num_layers: layers,
        block_size: 16,
        num_blocks: 4096,
        key_width: nkv * d,
        value_width: nkv * d,
    });
    let row: Vec<f32> = (0..nkv * d).map(|i| (i as f32 * 0.01).sin()).collect();
    for s in 0..seqs {
        kv.reserve(s, ctx).unwrap();
        for l in 0..layers {
            for p in 0..ctx {
                kv.write(l, s, p, &row, &row).unwrap();
            }
        }
    }
    let q: Vec<f32> = (0..nh * d).map(|i| (i as f32 * 0.03).cos()).collect();
    let shape = AttnShape {
        num_heads: nh,
        num_kv_heads: nkv,
        qk_dim: d,
        v_dim: d,
        scale: 0.125,
        mask: AttnMask::Causal,
    };
    let mut out = vec![0f32; nh * d];
    let mut best = f64::MAX;
    for _ in 0..20 {
        let t = Instant::now();
        for l in 0..layers {
            for s in 0..seqs {
                let v = kv.view(l, s).unwrap();
                attend(&v, &q, ctx - 1, &shape, &mut out);
            }
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "decode attention, 16 seqs x 8 layers, ctx {ctx}: {:.3} ms per step",
        best * 1e3
    );
}
