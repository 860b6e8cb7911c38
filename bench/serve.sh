#!/usr/bin/env bash
# End-to-end serving over HTTP (BENCHMARKS.md, "Serving: end-to-end over HTTP"): `moeflow bench`
# against `moeflow serve` with the bench checkpoint, three setups started fresh one after the
# other on the same machine, each swept over concurrency 1, 16 and 64:
#   disaggregated 2 prefill + 2 decode (the default) / aggregated on 2 decode / 1 process.
# Prints the table and the disaggregated/aggregated ratios (same run).
#
#   bench/serve.sh                       # needs a release build (bench/run.sh does it)
#   POINTS="1:8 16:32" bench/serve.sh    # fewer or other (concurrency:requests) points
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-/tmp/bench-qwen3}
OUT=${OUT:-/tmp/moeflow-bench-serve}
POINTS=${POINTS:-"1:8 16:32 64:64"}
PORT=${PORT:-18200}
BIN=target/release/moeflow
mkdir -p "$OUT"
[ -x "$BIN" ] || cargo build --release -p moeflow
[ -d "$MODEL" ] || "$BIN" init-model --arch qwen3_moe --preset bench --out "$MODEL"

run_setup() {  # name, serve flags...
  local name=$1; shift
  local log="$OUT/$name.serve.log"
  "$BIN" serve --model "$MODEL" --port "$PORT" --grpc-port $((PORT + 1)) "$@" >"$log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { echo "serve ($name) exited; see $log" >&2; return 1; }
    sleep 1
  done
  rm -f "$OUT/$name.jsonl"
  for p in $POINTS; do
    local c=${p%%:*} n=${p##*:}
    "$BIN" bench --base-url "http://127.0.0.1:$PORT" --endpoint /v1/completions \
      --random-input-len 128 --random-output-len 64 --ignore-eos \
      --max-concurrency "$c" --num-prompts "$n" --timeout 300 --duration 240 \
      --result-file "$OUT/$name.c$c.json" >"$OUT/$name.c$c.txt"
    cat "$OUT/$name.c$c.json" >>"$OUT/$name.jsonl"
  done
  kill -TERM "$pid"; wait "$pid" || true
}

echo "machine: $(lscpu | grep 'Model name' | sed 's/ \+/ /g'), $(nproc) cores; load: $(cut -d' ' -f1-3 /proc/loadavg)"
run_setup disaggregated
run_setup aggregated2 --prefill-workers 0 --decode-workers 2
run_setup aggregated1 --prefill-workers 0 --decode-workers 1
python3 bench/serve_table.py "$OUT"
