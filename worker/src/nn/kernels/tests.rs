//! The kernels against naive products.

use super::gemm::matmul_block;
use super::*;

fn naive(m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
    let mut c = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|l| a[i * k + l] * b[l * n + j]).sum();
        }
    }
    c
}

#[test]
fn exp_is_accurate_over_the_range_softmax_and_silu_use() {
    let mut x = -87.0f32;
    while x < 88.0 {
        let (got, want) = (exp(x), x.exp());
        assert!(
            (got - want).abs() <= 4.0 * f32::EPSILON * want,
            "exp({x}) = {got}, want {want}"
        );
        x += 0.0137;
    }
    // Below the normal range: 0 instead of a subnormal.
    assert_eq!(exp(-90.0), 0.0);
    assert_eq!(exp(f32::NEG_INFINITY), 0.0);
    assert!(exp(f32::NAN).is_nan());
}

#[test]
fn col_blocks_cover_exactly() {
    for (n, parts) in [(1, 4), (31, 2), (512, 4), (1000, 3), (32000, 2)] {
        let b = col_blocks(n, parts);
        assert_eq!(b.first().map(|r| r.start), Some(0));
        assert_eq!(b.last().map(|r| r.end), Some(n));
        assert!(b.windows(2).all(|w| w[0].end == w[1].start));
    }
}

/// Every kernel path of `matmul_block`, both layouts, into a strided, offset block;
/// small integer values make every summation order exact.
#[test]
fn matmul_block_matches_naive_on_every_path() {
    for layout in [WeightLayout::InputMajor, WeightLayout::OutputMajor] {
        for m in [1, 2, 3, 4, 5, 16, 17, 40, 49, 70] {
            for (k, n) in [(1, 1), (13, 7), (64, 70), (9, 130)] {
                let x: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 7) as f32 - 3.0).collect();
                // w(l, c) for l < k, c < n, stored per layout with a padded stride.
                let wv = |l: usize, c: usize| ((l * 5 + c * 3) % 7) as f32 - 3.0;
                let (w, w_rs) = match layout {
                    WeightLayout::InputMajor => {
                        let rs = n + 5;
                        let mut w = vec![0f32; k * rs];
                        for l in 0..k {
                            for c in 0..n {
                                w[l * rs + c] = wv(l, c);
                            }
                        }
                        (w, rs)
                    }
                    WeightLayout::OutputMajor => {
                        let rs = k + 3;
                        let mut w = vec![0f32; n * rs];
                        for c in 0..n {
                            for l in 0..k {
                                w[c * rs + l] = wv(l, c);
                            }
                        }
                        (w, rs)
                    }
                };
                let wn: Vec<f32> = (0..k * n).map(|i| wv(i / n, i % n)).collect();
                let want = naive(m, n, k, &x, &wn);
                let (off, rs) = (2, n + 3);
                let mut buf = vec![f32::NAN; off + m * rs];
                let dst = Dst {
                    out: OutPtr::new(&mut buf),
                    off,
                    rs,
                };
                let xm = MatRef {
                    data: &x,
                    rs: k,
                    cs: 1,
                };
                let wr = Weights {
                    data: &w,
                    rs: w_rs,
                    layout,
                };
                // SAFETY: single-threaded; the block is in bounds.
                unsafe { matmul_block(dst, m, n, k, xm, wr) };
                for i in 0..m {
                    assert_eq!(
                        &buf[off + i * rs..off + i * rs + n],
                        &want[i * n..(i + 1) * n],
                        "{layout:?} m={m} k={k} n={n} row {i}"
                    );
                }
            }
        }
    }
}

#[test]
fn grouped_swiglu_matches_naive() {
    let (h, f) = (24, 40);
    let ffns: Vec<(Vec<f32>, Vec<f32>)> = (0..3)
        .map(|e| {
            let gu = (0..h * 2 * f)
                .map(|i| (((i * 31 + e * 7) % 17) as f32 - 8.0) * 0.02)
                .collect();
            let d = (0..f * h)
                .map(|i| (((i * 13 + e * 5) % 11) as f32 - 5.0) * 0.03)
                .collect();
            (gu, d)
        })
        .collect();
    // Group sizes that take the single-row, axpy, packed and plain gemm paths.
    let sizes = [1, 3, 20, 60];
    let a: usize = sizes.iter().sum();
    let x: Vec<f32> = (0..a * h)
        .map(|i| ((i % 23) as f32 - 11.0) * 0.05)
        .collect();
    let scale: Vec<f32> = (0..a).map(|r| 0.5 + r as f32 * 0.01).collect();
    let mut groups = Vec::new();
    let mut start = 0;
    for (g, &n) in sizes.iter().enumerate() {
        let (gu, d) = &ffns[g % ffns.len()];
        groups.push(GroupWork {
            ffn: SwiGluRef {
                gate_up: gu,
                down: d,
            },
            rows: start..start + n,
        });
        start += n;
    }
    let got = grouped_swiglu(&x, &groups, h, f, Some(&scale));
    for gw in &groups {
        for r in gw.rows.clone() {
            let xr = &x[r * h..(r + 1) * h];
            let hid = naive(1, 2 * f, h, xr, gw.ffn.gate_up);
            let act: Vec<f32> = (0..f)
                .map(|j| {
                    let g = hid[j];
                    g / (1.0 + (-g).exp()) * hid[f + j] * scale[r]
                })
                .collect();
            let want = naive(1, h, f, &act, gw.ffn.down);
            for (c, (a, b)) in got[r * h..(r + 1) * h].iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "row {r} col {c}: {a} vs {b}"
                );
            }
        }
    }
}

#[test]
fn linear_matches_naive_for_small_and_large_shapes() {
    for (m, k, n) in [(1, 8, 5), (3, 64, 700), (40, 96, 130)] {
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 5) % 11) as f32 - 5.0).collect();
        let wt: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
        let xt = Tensor::from_vec(x.clone(), (m, k), &candle_core::Device::Cpu).unwrap();
        let wt_ = Tensor::from_vec(w, (n, k), &candle_core::Device::Cpu).unwrap();
        let got = linear(&xt, &wt_).unwrap();
        assert_eq!(got, naive(m, n, k, &x, &wt), "{m}x{k}x{n}");
    }
}
