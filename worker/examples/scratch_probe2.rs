use candle_core::{Device, Tensor};
use moeflow_worker::nn::Linear;
use std::time::Instant;
fn randn(s: (usize, usize), fan: usize) -> Tensor {
    Tensor::randn(0f32, 1.0 / (fan as f32).sqrt(), s, &Device::Cpu).unwrap()
}
fn main() {
    let m: usize = std::env::args().nth(1).unwrap().parse().unwrap();
    let ours = std::env::args().nth(2).is_none();
    let x = randn((m, 512), 1);
    let head = Linear::from_weight(randn((32000, 512), 512));
    let mut best = f64::MAX;
    for _ in 0..30 {
        let t = Instant::now();
        if ours {
            head.forward(&x).unwrap();
        } else {
            x.matmul(&head.weight().t().unwrap()).unwrap();
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!("m={m} ours={ours} {:.3} ms", best * 1e3);
}
