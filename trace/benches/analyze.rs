//! Throughput of the analyzer's per-token update on DeepSeek-V3-shaped synthetic requests
//! (256 experts, top-8, 58 MoE layers), with every statistic on. One "item" of the counter is
//! one token at one MoE layer; divide by 58 for whole tokens.
//!
//! Run: `cargo bench -p moeflow-trace --bench analyze`.

use divan::counter::ItemsCount;
use divan::Bencher;
use moeflow_trace::analysis::AnalyzerConfig;
use moeflow_trace::synth::{SynthConfig, SynthGenerator};
use moeflow_trace::{Analyzer, TraceItem};

fn main() {
    divan::main();
}

/// Four requests of `prompt` prompt tokens and `output` decode steps.
fn requests(prompt: usize, output: usize) -> (moeflow_trace::ModelShape, Vec<TraceItem>) {
    let g = SynthGenerator::new(SynthConfig {
        requests: 4,
        prompt_len: (prompt, prompt),
        output_len: (output, output),
        hot_pairs: 16,
        layer_correlation: 0.5,
        token_correlation: 0.3,
        zipf_exponent: 0.8,
        ..SynthConfig::deepseek_v3()
    })
    .expect("benchmark config is valid");
    (g.shape().clone(), g.items().collect())
}

fn token_layers(items: &[TraceItem]) -> usize {
    items
        .iter()
        .map(|i| match i {
            TraceItem::Request(r) => r
                .iterations
                .iter()
                .map(|it| it.num_tokens() * it.layers.len())
                .sum(),
            TraceItem::Counts(_) => 0,
        })
        .sum()
}

/// Every statistic on; prefill-heavy (512 prompt tokens, 64 decode steps).
#[divan::bench(sample_count = 20)]
fn all_statistics(bencher: Bencher) {
    run(bencher, requests(512, 64), AnalyzerConfig::default());
}

/// Every statistic on; decode only (one prompt token, 512 decode steps).
#[divan::bench(sample_count = 20)]
fn all_statistics_decode(bencher: Bencher) {
    run(bencher, requests(1, 512), AnalyzerConfig::default());
}

/// Frequencies only (what aggregate sources support), prefill-heavy.
#[divan::bench(sample_count = 20)]
fn frequencies_only(bencher: Bencher) {
    let config = AnalyzerConfig {
        coactivation: false,
        transitions: false,
        ..AnalyzerConfig::default()
    };
    run(bencher, requests(512, 64), config);
}

fn run(
    bencher: Bencher,
    (shape, items): (moeflow_trace::ModelShape, Vec<TraceItem>),
    config: AnalyzerConfig,
) {
    let mut analyzer = Analyzer::new(shape, config).expect("valid shape");
    bencher
        .counter(ItemsCount::new(token_layers(&items)))
        .bench_local(|| {
            for item in &items {
                analyzer.add(item).expect("synthetic items are valid");
            }
            analyzer.flush();
        });
}
