#!/usr/bin/env bash
# Placement quality (BENCHMARKS.md, "Placement: quality on real routing data"):
#  1. DeepSeek-V3 expert counts: plan from a prefill dump, replay a decode dump, for 8/32/64
#     ranks with 0 and 1 redundant slots per rank, every planner side by side with the
#     contiguous baseline and the decode-informed best case (`--oracle`), same run; also
#     plans from one workload replayed on another.
#  2. Mixtral-8x7B per-token routing: bytes crossing ranks and destination ranks per token for
#     every planner (2 and 4 ranks).
# Prints one Markdown row per (case, ranks, R) with busiest/mean per planner.
#
#   bench/placement.sh                # needs a release build (bench/run.sh does it)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/moeflow}
DATA=${DATA:-../shared/data}
OUT=${OUT:-/tmp/moeflow-bench-placement}
[ -x "$BIN" ] || cargo build --release -p moeflow
mkdir -p "$OUT"
DS="$DATA/deepseek-v3-expert-counts"
ALGOS=contiguous,round-robin,eplb,prefill-aware,traffic-aware

row() {  # plan-from, eval-on, ranks, R
  local from=$1 on=$2 n=$3 r=$4 dir="$OUT/ds-$1-$2-$3-$4"
  MOEFLOW_LOG=warn "$BIN" place compare --algos "$ALGOS" --ranks "$n" --redundant "$r" \
    --ranks-per-node 8 --groups 8 --from "$DS/$from.json" --on "$DS/$on.json" \
    --plan-phase prefill --eval-phase decode --oracle --out "$dir" > "$dir.txt"
  # EPLB without a topology (global mode): the setting of MISSION.md's anchors.
  MOEFLOW_LOG=warn "$BIN" place compare --algos eplb --ranks "$n" --redundant "$r" \
    --from "$DS/$from.json" --on "$DS/$on.json" --plan-phase prefill --eval-phase decode \
    --out "$dir-global" > "$dir-global.txt"
  python3 - "$dir/comparison.json" "$from" "$on" "$n" "$r" "$dir-global/comparison.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
v = {name: r["overall"]["busiest_over_mean"] for name, r in c["runs"]}
v["eplb-global"] = json.load(open(sys.argv[6]))["runs"][0][1]["overall"]["busiest_over_mean"]
best = min(v["eplb (oracle)"], v["prefill-aware (oracle)"])
cells = [v[k] for k in ["contiguous", "round-robin", "eplb", "eplb-global", "prefill-aware", "traffic-aware"]]
ref = min(v["eplb"], v["eplb-global"])
print(f"| {sys.argv[2]} | {sys.argv[3]} | {sys.argv[4]} | {sys.argv[5]} | "
      + " | ".join(f"{x:.3f}" for x in cells)
      + f" | {best:.3f} | {v['prefill-aware'] - ref:+.3f} | {v['traffic-aware'] - ref:+.3f} |")
PY
}

echo "## DeepSeek-V3: busiest rank over mean, decode, averaged over the 58 MoE layers"
echo
echo "| plan from | evaluate on | ranks | R | contiguous | round-robin | eplb | eplb-global | prefill-aware | traffic-aware | decode-informed | prefill-aware - best eplb | traffic-aware - best eplb |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for w in in1000out1000 in2000out100; do
  for n in 8 32 64; do
    for r in 0 1; do row "prefill_$w" "decode_$w" "$n" "$r"; done
  done
done
for pair in "prefill_in1024 decode_in1000out1000" "prefill_in4096 decode_in2000out100" "prefill_in2000out100 decode_in1000out1000"; do
  set -- $pair
  for n in 8 32 64; do
    for r in 0 1; do row "$1" "$2" "$n" "$r"; done
  done
done

echo
echo "## Mixtral-8x7B per-token routing (HumanEval, greedy): data movement per token per MoE layer"
echo
MX="$DATA/mixtral-8x7b-routing/humaneval_p0_prompt_and_generation.jsonl"
for n in 2 4; do
  for r in 0 1; do
    dir="$OUT/mixtral-$n-$r"
    MOEFLOW_LOG=warn "$BIN" place compare --algos "$ALGOS" --ranks "$n" --redundant "$r" \
      --from "$MX" --on "$DATA/mixtral-8x7b-routing/humaneval_generation.jsonl" \
      --plan-phase all --eval-phase all --hidden-size 4096 --intermediate-size 14336 \
      --out "$dir" > "$dir.txt"
    echo "### $n ranks, R=$r (plan from problem 0, replay problems 0 and 1 generation)"
    echo
    echo '```'
    cat "$dir.txt" | grep -v '^wrote'
    echo '```'
  done
done
