#!/usr/bin/env bash
# Cost of expert-trace recording (BENCHMARKS.md, "Serving: trace recording overhead"):
# `moeflow serve` (bench preset, default 2 prefill + 2 decode workers) under `moeflow bench`,
# without and with `--trace-dir` (every request traced), alternating, REPS times each.
#
#   cargo build --release -p moeflow
#   bench/trace_overhead.sh          # prints one line per run, then the sizes of the traces
#
# Env: BIN (default target/release/moeflow), MODEL (default /tmp/bench-qwen3), REPS (3),
# C (concurrency, 16), N (requests per run, 32), OUT (/tmp/trace-overhead).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/moeflow}
MODEL=${MODEL:-/tmp/bench-qwen3}
REPS=${REPS:-3}
C=${C:-16}
N=${N:-32}
OUT=${OUT:-/tmp/trace-overhead}
PORT=18200
rm -rf "$OUT" && mkdir -p "$OUT"
if [ ! -d "$MODEL" ]; then
  "$BIN" init-model --arch qwen3_moe --preset bench --out "$MODEL"
fi

run() { # run MODE REP
  local mode=$1 rep=$2 extra=()
  if [ "$mode" = traced ]; then extra=(--trace-dir "$OUT/traces-$rep"); fi
  MOEFLOW_LOG=warn "$BIN" serve --model "$MODEL" --port $PORT --grpc-port $((PORT + 1)) \
    "${extra[@]}" >/dev/null 2>"$OUT/serve-$mode-$rep.log" &
  local pid=$!
  trap 'kill -TERM $pid 2>/dev/null || true' RETURN
  for _ in $(seq 1 600); do
    curl -s "http://127.0.0.1:$PORT/health" | grep -q healthy && break
    sleep 0.2
  done
  "$BIN" bench --base-url "http://127.0.0.1:$PORT" --endpoint /v1/completions \
    --random-input-len 128 --random-output-len 64 --ignore-eos \
    --max-concurrency "$C" --num-prompts "$N" --timeout 300 --ready-timeout 120 \
    --result-file "$OUT/$mode-$rep.json" >/dev/null
  kill -TERM "$pid"
  wait "$pid" || true
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(f\"$mode $rep output_tok_s={r['output_throughput']:.1f} completed={r['completed']}\")" \
    "$OUT/$mode-$rep.json"
}

for rep in $(seq 1 "$REPS"); do
  if [ $((rep % 2)) -eq 1 ]; then run plain "$rep"; run traced "$rep";
  else run traced "$rep"; run plain "$rep"; fi
done

python3 - "$OUT" "$REPS" <<'EOF'
import json, os, sys
out, reps = sys.argv[1], int(sys.argv[2])
tput = {m: [json.load(open(f"{out}/{m}-{r}.json"))["output_throughput"] for r in range(1, reps + 1)]
        for m in ("plain", "traced")}
mean = {m: sum(v) / len(v) for m, v in tput.items()}
print("plain  tok/s:", " ".join(f"{x:.1f}" for x in tput["plain"]), f"mean {mean['plain']:.1f}")
print("traced tok/s:", " ".join(f"{x:.1f}" for x in tput["traced"]), f"mean {mean['traced']:.1f}")
print(f"traced / plain: {mean['traced'] / mean['plain']:.3f}")
json_bytes = json_files = 0
for root, _, files in os.walk(f"{out}/traces-1/paper"):
    for f in files:
        json_files += 1
        json_bytes += os.path.getsize(os.path.join(root, f))
mfbin = os.path.getsize(f"{out}/traces-1/trace.mfbin")
print(f"run 1 traces: {json_files} JSON files, {json_bytes} bytes; trace.mfbin {mfbin} bytes; "
      f"JSON / binary {json_bytes / mfbin:.1f}x")
EOF
