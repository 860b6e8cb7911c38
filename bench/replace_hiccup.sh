#!/usr/bin/env bash
# Live re-placement under load (BENCHMARKS.md, "Live re-placement"): `moeflow serve` with the
# bench preset on 4 decode ranks (gates replaying DeepSeek-V3 decode counts), `moeflow bench`
# load plus one long probe stream, and `moeflow place apply` of a balanced plan in the middle.
# Prints the bytes loaded, the step time (probe's inter-token gap) around the switch against
# the median, and the bench's failed-request count. NO_APPLY=1 runs the control: the same load
# and window without the switch.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-/tmp/bench-qwen3}
SOURCE=${SOURCE:-../shared/data/deepseek-v3-expert-counts/decode_in1000out1000.json}
WORK=${WORK:-/tmp/replace-hiccup}
PORT=${PORT:-18441}
GRPC=${GRPC:-18442}
DELAY=${DELAY:-20}
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-1}
cargo build --release -p moeflow -q
BIN=${CARGO_TARGET_DIR:-target}/release/moeflow
[ -d "$MODEL" ] || "$BIN" init-model --arch qwen3_moe --preset bench --out "$MODEL"
mkdir -p "$WORK"
mkdir -p "$WORK/plans"
# A balanced plan for the replayed counts: EPLB on them, folded onto the bench model.
"$BIN" trace fold "$SOURCE" --model "$MODEL" --phase decode --out "$WORK/decode_bench.json" \
  > /dev/null
"$BIN" place plan --algo eplb --ranks 4 --from "$WORK/decode_bench.json" --phase all \
  --model "$MODEL" --out "$WORK/plans/eplb.json" > /dev/null
MOEFLOW_LOG=info "$BIN" serve --model "$MODEL" --prefill-workers 0 --decode-workers 4 \
  --route-replay "$SOURCE" --port "$PORT" --grpc-port "$GRPC" > "$WORK/serve.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
until curl -sf "http://127.0.0.1:$PORT/health" > /dev/null; do sleep 1; done
"$BIN" bench --base-url "http://127.0.0.1:$PORT" --num-prompts 64 --max-concurrency 12 \
  --random-input-len 64 --random-output-len 96 --ignore-eos \
  --result-file "$WORK/bench.jsonl" > "$WORK/bench.txt" &
bench=$!
python3 bench/step_probe.py "http://127.0.0.1:$PORT" 600 > "$WORK/probe.json" &
probe=$!
sleep "$DELAY"
t0=$(date +%s.%N)
if [ -n "${NO_APPLY:-}" ]; then
  # The control: the same load and the same window, without a switch.
  echo '{"control": true}' > "$WORK/apply.json"
else
  "$BIN" place apply --plan "${PLAN:-$WORK/plans/eplb.json}" --group decode --addr "127.0.0.1:$GRPC" \
    | tee "$WORK/apply.json"
fi
t1=$(date +%s.%N)
wait "$bench" "$probe"
python3 - "$WORK" "$t0" "$t1" <<'PY'
import json, statistics, sys
work, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
p = json.load(open(f"{work}/probe.json"))
t = p["times"]
gaps = [(b - a, b) for a, b in zip(t, t[1:])]
during = [g for g, end in gaps if t0 - 0.5 <= end <= t1 + 2.0]
before = [g for g, end in gaps if end < t0]
b = json.loads(open(f"{work}/bench.jsonl").readline())
a = json.load(open(f"{work}/apply.json"))
print(json.dumps({
  "apply": a, "apply_wall_s": t1 - t0,
  "probe_tokens": len(t), "probe_error": p["error"],
  "median_step_ms_before": 1e3 * statistics.median(before),
  "max_step_ms_before": 1e3 * max(before),
  "max_step_ms_during_switch": 1e3 * max(during) if during else None,
  "median_step_ms_during_switch": 1e3 * statistics.median(during) if during else None,
  "steps_during_switch": len(during),
  "bench_completed": b.get("completed"), "bench_failed": b.get("failed"),
  "bench_errors": b.get("errors")}, indent=1))
PY
