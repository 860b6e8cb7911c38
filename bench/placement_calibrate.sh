#!/usr/bin/env bash
# How `planner::DEFAULT_MIN_WIN_SHARE` was chosen, on prefill data only (the decode files
# that BENCHMARKS.md's placement table judges plans on are never read here): prefill-aware
# and traffic-aware plan from each DeepSeek-V3 prefill dump and are evaluated on each other
# prefill dump (30 ordered pairs x 8/32/64 ranks x 0/1 redundant slots = 180 cells), against
# eplb (hierarchical at 32/64 ranks with 8 per node) and eplb-global, for every share in
# SHARES. Prints, per share, in how many cells each planner is worse (by more than 0.0005
# busiest over mean) than eplb and than the better of both EPLB modes, and by how much.
#
#   SHARES="0 0.6 0.7 0.8" bench/placement_calibrate.sh   # release build; ~2 min per share
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/moeflow}
DATA=${DATA:-../shared/data}
OUT=${OUT:-/tmp/moeflow-bench-calibrate}
SHARES=${SHARES:-0 0.6 0.7 0.8}
[ -x "$BIN" ] || cargo build --release -p moeflow
DS="$DATA/deepseek-v3-expert-counts"
files=(prefill_in512 prefill_in1024 prefill_in2048 prefill_in4096 prefill_in1000out1000 prefill_in2000out100)
mkdir -p "$OUT"

echo "| min win share | prefill-aware worse than eplb | worse than best of eplb, eplb-global (max) | sum of differences to that best | traffic-aware worse than eplb | worse than best (max) |"
echo "|---|---|---|---|---|---|"
for q in $SHARES; do
  rows="$OUT/rows-$q.txt"
  : > "$rows"
  for a in "${files[@]}"; do
    for b in "${files[@]}"; do
      [ "$a" = "$b" ] && continue
      for n in 8 32 64; do
        for r in 0 1; do
          d="$OUT/$q-$a-$b-$n-$r"
          MOEFLOW_LOG=warn "$BIN" place compare --algos eplb,prefill-aware,traffic-aware \
            --ranks "$n" --redundant "$r" --ranks-per-node 8 --groups 8 --min-win-share "$q" \
            --from "$DS/$a.json" --on "$DS/$b.json" --plan-phase prefill --eval-phase prefill \
            --out "$d" > /dev/null
          MOEFLOW_LOG=warn "$BIN" place compare --algos eplb --ranks "$n" --redundant "$r" \
            --from "$DS/$a.json" --on "$DS/$b.json" --plan-phase prefill --eval-phase prefill \
            --out "$d-global" > /dev/null
          python3 - "$d/comparison.json" "$d-global/comparison.json" >> "$rows" <<'PY'
import json, sys
v = {k: r["overall"]["busiest_over_mean"] for k, r in json.load(open(sys.argv[1]))["runs"]}
g = json.load(open(sys.argv[2]))["runs"][0][1]["overall"]["busiest_over_mean"]
print(v["eplb"], g, v["prefill-aware"], v["traffic-aware"])
PY
        done
      done
    done
  done
  python3 - "$rows" "$q" <<'PY'
import sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1])]
def worse(diffs):
    w = [d for d in diffs if d > 0.0005]
    return f"{len(w)} of {len(diffs)}" + (f" ({max(w):.4f})" if w else "")
pa_e = [p - e for e, g, p, t in rows]
pa_b = [p - min(e, g) for e, g, p, t in rows]
ta_e = [t - e for e, g, p, t in rows]
ta_b = [t - min(e, g) for e, g, p, t in rows]
print(f"| {sys.argv[2]} | {worse(pa_e)} | {worse(pa_b)} | {sum(pa_b):+.3f} | {worse(ta_e)} | {worse(ta_b)} |")
PY
done
