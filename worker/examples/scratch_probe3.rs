use std::time::Instant;
fn best<F: FnMut()>(mut f: F) -> f64 {
    f();
    let mut b = f64::MAX;
    for _ in 0..15 {
        let t = Instant::now();
        f();
        b = b.min(t.elapsed().as_secs_f64());
    }
    b
}
unsafe fn mm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dcs: isize,
    drs: isize,
    lhs: *const f32,
    lcs: isize,
    lrs: isize,
    rhs: *const f32,
    rcs: isize,
    rrs: isize,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        dcs,
        drs,
        false,
        lhs,
        lcs,
        lrs,
        rhs,
        rcs,
        rrs,
        0.0,
        1.0,
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
}
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy(m: usize, n: usize, k: usize, x: &[f32], w: &[f32], out: &mut [f32]) {
    let chunk = (4096 / m.max(1)).clamp(64, 1024);
    let mut c0 = 0;
    while c0 < n {
        let cn = chunk.min(n - c0);
        for i in 0..m {
            out[i * n + c0..i * n + c0 + cn].fill(0.0);
        }
        for l in 0..k {
            let wr = &w[l * n + c0..l * n + c0 + cn];
            for i in 0..m {
                let xi = x[i * k + l];
                for (o, &wv) in out[i * n + c0..i * n + c0 + cn].iter_mut().zip(wr) {
                    *o = xi.mul_add(wv, *o);
                }
            }
        }
        c0 += cn;
    }
}
fn main() {
    let (k, n) = (1024usize, 1024usize);
    let experts = 16; // distinct weight matrices to defeat cache
    let ws: Vec<Vec<f32>> = (0..experts)
        .map(|e| {
            (0..k * n)
                .map(|i| ((i * 7 + e) % 13) as f32 * 0.01)
                .collect()
        })
        .collect();
    for m in [1usize, 2, 4, 8, 16, 32, 64, 128] {
        let x: Vec<f32> = (0..m * k).map(|i| (i % 5) as f32).collect();
        let mut y = vec![0f32; m * n];
        let mut yt = vec![0f32; m * n];
        let mut pack = vec![0f32; k * 128];
        let flops = 2.0 * (m * n * k * experts) as f64;
        let a = best(|| {
            for w in &ws {
                unsafe {
                    mm(
                        m,
                        n,
                        k,
                        y.as_mut_ptr(),
                        1,
                        n as isize,
                        x.as_ptr(),
                        1,
                        k as isize,
                        w.as_ptr(),
                        1,
                        n as isize,
                    )
                }
            }
        });
        let b = best(|| {
            for w in &ws {
                unsafe {
                    mm(
                        m,
                        n,
                        k,
                        yt.as_mut_ptr(),
                        m as isize,
                        1,
                        x.as_ptr(),
                        1,
                        k as isize,
                        w.as_ptr(),
                        1,
                        n as isize,
                    )
                };
                for i in 0..m {
                    for j in 0..n {
                        y[i * n + j] = yt[j * m + i];
                    }
                }
            }
        });
        let c = |nb: usize, y: &mut Vec<f32>, pack: &mut Vec<f32>| {
            best(|| {
                for w in &ws {
                    for c0 in (0..n).step_by(nb) {
                        for l in 0..k {
                            pack[l * nb..l * nb + nb]
                                .copy_from_slice(&w[l * n + c0..l * n + c0 + nb]);
                        }
                        unsafe {
                            mm(
                                m,
                                nb,
                                k,
                                y.as_mut_ptr().add(c0),
                                1,
                                n as isize,
                                x.as_ptr(),
                                1,
                                k as isize,
                                pack.as_ptr(),
                                1,
                                nb as isize,
                            )
                        }
                    }
                }
            })
        };
        let c64 = c(64, &mut y, &mut pack);
        let c128 = c(128, &mut y, &mut pack);
        let d = best(|| {
            for w in &ws {
                unsafe { axpy(m, n, k, &x, w, &mut y) }
            }
        });
        println!("m={m:4}: axpy {:6.1}", flops / d / 1e9);
        println!("m={m:4}: rowmajor {:6.1}  colmajor+T {:6.1}  pack64 {:6.1}  pack128 {:6.1} GFLOP/s (1 thread)", flops / a / 1e9, flops / b / 1e9, flops / c64 / 1e9, flops / c128 / 1e9);
    }
}
