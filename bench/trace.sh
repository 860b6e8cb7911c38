#!/usr/bin/env bash
# Trace analysis throughput (BENCHMARKS.md, "Traces: analysis throughput"): a synthetic
# DeepSeek-V3-shaped tree in the paper's JSON layout (default 2 GiB), analysed by
# `moeflow trace analyze` with every statistic and with frequencies only, against the same
# run's baseline: reading the same bytes with `cat` (page cache warm for both).
#
#   bench/trace.sh                 # needs a release build (bench/run.sh does it)
#   SIZE=200M bench/trace.sh       # a smaller tree
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/moeflow}
SIZE=${SIZE:-2G}
OUT=${OUT:-/tmp/moeflow-bench-trace}
TREE=${TREE:-/tmp/moeflow-synth-tree-$SIZE}
THREADS=${THREADS:-$(nproc)}
[ -x "$BIN" ] || cargo build --release -p moeflow
mkdir -p "$OUT"
if [ ! -d "$TREE" ]; then
  "$BIN" trace synth --preset deepseek-v3 --format paper --out "$TREE" --target-bytes "$SIZE" \
    --set layer_correlation=0.3 --set token_correlation=0.3 --set hot_pairs=16 \
    --set 'workloads=[{"label":"mmlu/math"},{"label":"mmlu/history"},{"label":"code/python"}]'
fi
bytes=$(du -sb "$TREE" | cut -f1)
echo "tree: $TREE, $bytes bytes, $(find "$TREE" -name '*.json' | wc -l) files; threads $THREADS"

timed() {  # label, command...: prints MB/s over the tree's bytes
  local label=$1; shift
  local t0 t1
  t0=$(date +%s.%N)
  "$@" > "$OUT/$label.log" 2>&1 || { echo "$label failed (exit $?), see $OUT/$label.log"; tail -3 "$OUT/$label.log"; }
  t1=$(date +%s.%N)
  python3 -c "import sys; b,t0,t1,n=int(sys.argv[1]),float(sys.argv[2]),float(sys.argv[3]),int(sys.argv[4]); s=t1-t0; print(f'| $label | {s:.1f} | {b/1e6/s:.0f} | {b/1e6/s/n:.0f} |')" "$bytes" "$t0" "$t1" "$THREADS"
}

find "$TREE" -name '*.json' -print0 | xargs -0 cat > /dev/null   # warm the page cache
echo "| run | seconds | MB/s | MB/s per core |"
echo "|---|---|---|---|"
timed raw-read sh -c "find '$TREE' -name '*.json' -print0 | xargs -0 cat > /dev/null"
timed analyze-frequencies "$BIN" trace analyze "$TREE" --num-experts 256 --threads "$THREADS" \
  --frequencies-only --out "$OUT/frequencies"
timed analyze-all /usr/bin/time -f "max RSS %M KB" -o "$OUT/rss.txt" \
  "$BIN" trace analyze "$TREE" --num-experts 256 --threads "$THREADS" --out "$OUT/all"
echo "analyze-all: $(cat "$OUT/rss.txt") over $bytes bytes; report: $OUT/all/report.md"
