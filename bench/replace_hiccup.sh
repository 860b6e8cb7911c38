#!/usr/bin/env bash
# Live re-placement under load (BENCHMARKS.md, "Live re-placement"): `moeflow serve` with the
# bench preset on 4 decode ranks (gates replaying DeepSeek-V3 decode counts) under `moeflow
# bench` load, and `moeflow place apply` of a balanced plan in the middle.
#
# Step times come from the workers themselves (the `moeflow::step` debug event every rank logs
# per step; a step's time is its slowest rank's), in a fixed window from the apply request on
# (WINDOW seconds, default 3.5: staging, commit and the steps after it) against the window of
# the same width just before. Prints those, the bytes loaded and the bench's failed requests.
# NO_APPLY=1 runs the control: the same load and the same window without the switch;
# RELABEL=1 applies with `--relabel`.
#
# STEADY=1 makes the load uniform: all requests start together and decode through the window,
# so that the window holds decode steps only. With the default load new requests keep arriving,
# and their prefill steps, in any window, are as long as a stall the switch could cause.
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
MOEFLOW_LOG=info,moeflow::step=debug "$BIN" serve --model "$MODEL" --prefill-workers 0 \
  --decode-workers 4 --route-replay "$SOURCE" --port "$PORT" --grpc-port "$GRPC" \
  > "$WORK/serve.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
until curl -sf "http://127.0.0.1:$PORT/health" > /dev/null; do sleep 1; done
if [ -n "${STEADY:-}" ]; then
  load=(--num-prompts 12 --max-concurrency 12 --random-output-len 800 --warmup-requests 0)
else
  load=(--num-prompts 64 --max-concurrency 12 --random-output-len 96)
fi
"$BIN" bench --base-url "http://127.0.0.1:$PORT" "${load[@]}" \
  --random-input-len 64 --ignore-eos \
  --result-file "$WORK/bench.jsonl" > "$WORK/bench.txt" &
bench=$!
sleep "$DELAY"
t0=$(date +%s.%N)
if [ -n "${NO_APPLY:-}" ]; then
  echo '{"control": true}' > "$WORK/apply.json"
else
  # RELABEL=1: let `place apply --relabel` permute the plan's rank lists to load the fewest
  # experts (same balance).
  "$BIN" place apply --plan "${PLAN:-$WORK/plans/eplb.json}" --group decode \
    --addr "127.0.0.1:$GRPC" ${RELABEL:+--relabel} > "$WORK/apply.json"
fi
t1=$(date +%s.%N)
wait "$bench"
python3 - "$WORK" "$t0" "$t1" "${WINDOW:-3.5}" <<'PY'
import datetime, json, re, statistics, sys
work, t0, t1, width = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
# Every rank's step events: (end time, ms, tokens). A step runs on all ranks together (they
# meet in the all-to-all), so events less than 20 ms apart are one step, timed by its slowest.
event = re.compile(r"^(\S+Z) DEBUG moeflow::step: step ms=([0-9.]+) tokens=(\d+)")
events = []
for line in open(f"{work}/serve.log"):
    m = event.match(re.sub(r"\x1b\[[0-9;]*m", "", line))
    if m:
        at = datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
        events.append((at, float(m.group(2)), int(m.group(3))))
events.sort()
steps = []
for at, ms, tokens in events:
    if steps and at - steps[-1][0] < 0.02:
        steps[-1] = (at, max(ms, steps[-1][1]), steps[-1][2] + tokens)
    else:
        steps.append((at, ms, tokens))
# The same window for a switch and its control: from just before the apply request, a fixed
# width (a window ending with the switch's reply would be longer for the switch).
during = [s for s in steps if t0 - 0.5 <= s[0] <= t0 + width]
before = [s for s in steps if t0 - 0.5 - width <= s[0] < t0 - 0.5]
med = statistics.median(s[1] for s in before) if before else float("nan")
b = json.loads(open(f"{work}/bench.jsonl").readline())
a = json.load(open(f"{work}/apply.json"))
# What a client sees between two tokens: the time from one step's end to the next one's,
# which adds the router's turn-around and a commit (made between two steps) to the step.
ends = [s[0] for s in steps]
gap_after = {e: 1e3 * (b - e) for e, b in zip(ends, ends[1:])}
def summary(w):
    ms = [s[1] for s in w]
    gaps = [gap_after[s[0]] for s in w if s[0] in gap_after]
    return {"steps": len(w),
            "median_interval_ms": round(statistics.median(gaps), 1) if gaps else None,
            "max_interval_ms": round(max(gaps), 1) if gaps else None,
            "median_ms": round(statistics.median(ms), 1) if ms else None,
            "max_ms": round(max(ms), 1) if ms else None,
            "over_2x_median_before": sum(m > 2 * med for m in ms),
            "tokens_per_step": round(statistics.mean(s[2] for s in w), 1) if w else None}
print(json.dumps({
  "apply": a, "apply_wall_s": round(t1 - t0, 3), "window_s": width,
  "before": summary(before), "window": summary(during),
  # The long steps of the window, in seconds from the apply request (t0) and from its reply
  # (t1, after the commit), so staging-time and after-switch stalls are told apart.
  "long_steps_in_window": [
    {"ms": round(ms, 1), "tokens": tok, "end_from_t0_s": round(at - t0, 3),
     "end_from_t1_s": round(at - t1, 3)}
    for at, ms, tok in during if ms > 2 * med],
  "bench_completed": b.get("completed"), "bench_failed": b.get("failed"),
  "bench_errors": b.get("errors")}, indent=1))
PY
