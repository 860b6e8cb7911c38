#!/usr/bin/env bash
# Model-layer benchmarks of BENCHMARKS.md, one after the other (never two heavy things at once
# on a 2-core machine):
#   1. load memory:        peak RSS while loading the bench checkpoint vs its weights
#   2. MoE layer:          divan (with the f32 matmul baseline) and the paired ratio
#   3. generation:         moeflow batch 1 and 16 (memory-bandwidth and matmul baselines)
#   4. reference:          transformers on the same checkpoint, same shapes
#
#   bench/model.sh                 # everything (about a minute on a quiet machine)
#   SKIP_REFERENCE=1 bench/model.sh
#
# Writes /tmp/bench-qwen3 if missing; results (JSON and text) go to $OUT (default
# /tmp/moeflow-bench-model).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-/tmp/bench-qwen3}
OUT=${OUT:-/tmp/moeflow-bench-model}
PYTHON=${PYTHON:-/work/pyref/bin/python}
mkdir -p "$OUT"

echo "machine: $(lscpu | grep 'Model name' | sed 's/ \+/ /g'), $(nproc) cores; load: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ ! -d "$MODEL" ]; then
  cargo run --release -p moeflow -- init-model --arch qwen3_moe --preset bench --out "$MODEL"
fi
cargo build --release -p moeflow-worker --example bench_load --example bench_generate
cargo bench -p moeflow-worker --bench moe_layer --no-run

echo "== load memory"
./target/release/examples/bench_load "$MODEL" f32 | tee "$OUT/load.json"
./target/release/examples/bench_load "$MODEL" bf16 | tee "$OUT/load_bf16.json"

echo "== MoE layer (divan; items = FLOPs, so Gitem/s = GFLOP/s)"
cargo bench -p moeflow-worker --bench moe_layer | tee "$OUT/moe_layer.txt"
echo "== MoE layer, paired ratio"
cargo bench -p moeflow-worker --bench moe_layer -- --paired | tee "$OUT/moe_layer_paired.txt"

echo "== generation: moeflow"
./target/release/examples/bench_generate --model "$MODEL" --batch 1,16 --prompt-len 128 \
  --new-tokens 64 --repeats 3 | tee "$OUT/moeflow.json"

if [ -z "${SKIP_REFERENCE:-}" ]; then
  echo "== generation: transformers"
  "$PYTHON" tools/bench_reference.py --model "$MODEL" --batch 1,16 --prompt-len 128 \
    --new-tokens 64 --threads 1,2 --json "$OUT/reference.json"
  "$PYTHON" - "$OUT/moeflow.json" "$OUT/reference.json" <<'EOF'
import json, sys
ours = {r["batch"]: r for r in json.load(open(sys.argv[1]))["results"]}
ref = {r["batch"]: r for r in json.load(open(sys.argv[2]))["results"]}
for b in sorted(ours):
    if b in ref:
        o, r = ours[b]["tokens_per_s"], ref[b]["tokens_per_s"]
        print(f"batch {b:3d}: moeflow {o:7.1f} tok/s, transformers {r:6.1f} tok/s "
              f"(best of threads {ref[b]['tokens_per_s_by_threads']}) -> {o / r:.2f}x")
EOF
fi
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
