#!/usr/bin/env bash
# Regenerates every table of BENCHMARKS.md from a clean checkout, one section after the other
# (never two heavy things at once: on a small machine they would measure each other).
#
#   bench/run.sh                  # everything; results under $OUT (default /tmp/moeflow-bench)
#   bench/run.sh trace placement  # only some sections
#
# Sections (BENCHMARKS.md heading in brackets); each prints the machine, the command, the
# baseline measured in the same run and the ratio:
#   model      [Model: MoE layer throughput / end-to-end generation / load memory]
#              bench/model.sh; the transformers reference needs $PYTHON with torch and
#              transformers (tools/golden/requirements.txt); SKIP_REFERENCE=1 skips it
#   comm       [Comm: TCP all-to-all on loopback]            baseline: one raw TCP stream
#   frontend   [Serving: front-end overhead]                 baseline: bare SSE echo route
#   dispatch   [Expert parallel: dispatch + combine latency] baseline: single-process MoE
#   ep         [Expert parallel: bytes moved per token]      bench/ep.sh
#   serve      [Serving: end-to-end over HTTP]               bench/serve.sh; baseline: aggregated
#   trace      [Traces: ...]                                 bench/trace.sh; baseline: raw read
#   placement  [Placement: ...]                              bench/placement.sh; baseline: contiguous
#   record     [Serving: trace recording overhead]           bench/trace_overhead.sh; baseline: untraced
#   replace    [Placement end to end]                        bench/placement_e2e.sh; baseline: contiguous
#   hiccup     [Live re-placement under load]                bench/replace_hiccup.sh (STEADY=1);
#                                                            baseline: NO_APPLY=1, same load, no switch
set -euo pipefail
cd "$(dirname "$0")/.."
export OUT_ROOT=${OUT:-/tmp/moeflow-bench}
export MODEL=${MODEL:-/tmp/bench-qwen3}
mkdir -p "$OUT_ROOT"
ALL="model comm frontend dispatch ep serve record trace placement replace hiccup"
SECTIONS=${*:-$ALL}

machine() {
  echo "machine: $(lscpu | grep 'Model name' | sed 's/ \+/ /g'), $(nproc) cores," \
    "$(free -g | awk '/Mem:/ {print $2}') GiB; load: $(cut -d' ' -f1-3 /proc/loadavg); commit $(git rev-parse --short HEAD)"
}

section() {  # name, command...
  local name=$1; shift
  echo
  echo "=== $name: $*"
  machine
  local start=$SECONDS
  OUT="$OUT_ROOT/$name" "$@" 2>&1 | tee "$OUT_ROOT/$name.txt"
  echo "=== $name done in $((SECONDS - start)) s"
}

echo "building release binaries"
cargo build --release -p moeflow
[ -d "$MODEL" ] || target/release/moeflow init-model --arch qwen3_moe --preset bench --out "$MODEL"

for s in $SECTIONS; do
  case $s in
    model) section model bench/model.sh ;;
    comm) section comm cargo bench -p moeflow-comm --bench all_to_all ;;
    frontend) section frontend cargo bench -p moeflow-frontend --bench overhead ;;
    dispatch) section dispatch cargo bench -p moeflow-worker --bench dispatch ;;
    ep) section ep env OUT="$OUT_ROOT/ep-group-stats.jsonl" bench/ep.sh ;;
    serve) section serve bench/serve.sh ;;
    trace) section trace bench/trace.sh ;;
    placement) section placement bench/placement.sh ;;
    record) section record bench/trace_overhead.sh ;;
    replace) section replace env WORK="$OUT_ROOT/replace" bench/placement_e2e.sh ;;
    hiccup)
      section hiccup env WORK="$OUT_ROOT/hiccup" STEADY=1 DELAY=10 bench/replace_hiccup.sh
      section hiccup-control env WORK="$OUT_ROOT/hiccup-control" STEADY=1 DELAY=10 NO_APPLY=1 \
        bench/replace_hiccup.sh ;;
    *) echo "unknown section $s (known: $ALL)" >&2; exit 2 ;;
  esac
done
echo
echo "all results under $OUT_ROOT (one .txt per section)"
