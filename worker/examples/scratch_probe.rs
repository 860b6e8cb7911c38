//! Temporary probe (not kept).
use candle_core::{Device, Tensor};
use moeflow_worker::moe::{Assignment, LayerExperts, WeightApplication};
use moeflow_worker::nn::{Linear, SwiGlu};
use std::time::Instant;

fn randn(s: (usize, usize), fan: usize) -> Tensor {
    Tensor::randn(0f32, 1.0 / (fan as f32).sqrt(), s, &Device::Cpu).unwrap()
}
fn time<F: FnMut()>(name: &str, reps: usize, mut f: F) {
    f();
    let mut best = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!("{name}: {:.3} ms", best * 1e3);
}

fn main() {
    let (h, f, e, k) = (512, 256, 32, 4);
    let mut le = LayerExperts::new(0, e, h);
    for i in 0..e as u32 {
        le.insert(
            i,
            SwiGlu::from_input_major(randn((h, 2 * f), h), randn((f, h), f)).unwrap(),
        );
    }
    for m in [1usize, 16, 2048] {
        let x = randn((m, h), 1);
        let q = Linear::from_weight(randn((512, 512), 512));
        let kp = Linear::from_weight(randn((256, 512), 512));
        time(&format!("m={m} q_proj 512x512"), 50, || {
            q.forward(&x).unwrap();
        });
        time(&format!("m={m} k_proj 256x512"), 50, || {
            kp.forward(&x).unwrap();
        });
        time(&format!("m={m} candle q 512x512"), 50, || {
            x.matmul(&q.weight().t().unwrap()).unwrap();
        });
        let asg: Vec<Assignment> = (0..m * k)
            .map(|i| Assignment {
                row: (i / k) as u32,
                expert: ((i * 7 + i / k * 3) % e) as u32,
                weight: 0.25,
            })
            .collect();
        time(&format!("m={m} experts"), 20, || {
            le.compute(&x, &asg, WeightApplication::Output, m).unwrap();
        });
        if m <= 16 {
            let head = Linear::from_weight(randn((32000, 512), 512));
            time(&format!("m={m} lm_head"), 20, || {
                head.forward(&x).unwrap();
            });
            time(&format!("m={m} candle lm_head"), 20, || {
                x.matmul(&head.weight().t().unwrap()).unwrap();
            });
        }
    }
}
