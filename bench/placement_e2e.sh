#!/usr/bin/env bash
# The paper's effect end to end (BENCHMARKS.md, "Placement end to end"): MoE computation time
# per step of the bench preset on 4 CPU ranks, planned from DeepSeek-V3's PREFILL expert counts
# and run while the gates replay its DECODE counts (`--route-replay`, benchmarking only): plan
# from prefill, run decode, as in the paper.
#
#   bench/placement_e2e.sh                         # every plan below
#   ALGOS="contiguous eplb" bench/placement_e2e.sh # a subset
#
# Plans: `moeflow trace fold` maps the prefill counts onto the bench model (its MoE layers and
# experts), then `moeflow place plan --algo A --redundant R` for every algorithm in $ALGOS and
# R in 0 and 1 (contiguous only with R=0). `moeflow place eval` replays the folded decode counts
# against every plan (the modelled balance, in $WORK/eval.txt).
#
# Per plan: `moeflow serve` (aggregated, 4 decode ranks), the same `moeflow bench` load, then
# the ranks' EpStats (republished by the router as moeflow:expert_compute_seconds and friends)
# give: the busiest rank's expert-compute seconds per step (what placement balances) and the
# mean routed-MoE seconds per step (dispatch + compute + combine, all layers).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-/tmp/bench-qwen3}
DATA=${DATA:-../shared/data/deepseek-v3-expert-counts}
PREFILL=${PREFILL:-$DATA/prefill_in1000out1000.json}
DECODE=${DECODE:-$DATA/decode_in1000out1000.json}
WORK=${WORK:-/tmp/placement-e2e}
PLANS=$WORK/plans
ALGOS=${ALGOS:-contiguous eplb prefill-aware traffic-aware}
RANKS=4
PROMPTS=${PROMPTS:-48}
CONC=${CONC:-16}
IN=${IN:-64}
OUT_LEN=${OUT_LEN:-48}
PORT=${PORT:-18431}
GRPC=${GRPC:-18432}
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-1}
cargo build --release -p moeflow -q
BIN=${CARGO_TARGET_DIR:-target}/release/moeflow
[ -d "$MODEL" ] || "$BIN" init-model --arch qwen3_moe --preset bench --out "$MODEL"
mkdir -p "$PLANS"
# The file names keep the phase labels (SGLang dumps carry them in the name).
"$BIN" trace fold "$PREFILL" --model "$MODEL" --phase prefill --out "$WORK/prefill_bench.json"
"$BIN" trace fold "$DECODE" --model "$MODEL" --phase decode --out "$WORK/decode_bench.json"
for algo in $ALGOS; do
  for r in 0 1; do
    [ "$algo" = contiguous ] && [ "$r" = 1 ] && continue
    name=$algo; [ "$r" = 0 ] || name=$algo-r$r
    "$BIN" place plan --algo "$algo" --ranks "$RANKS" --redundant "$r" \
      --from "$WORK/prefill_bench.json" --phase prefill --model "$MODEL" --out "$PLANS/$name.json"
  done
done
# The modelled balance of every plan on the decode counts (`max/mean`: busiest rank's load over
# the mean; the times assume DeepSeek-V3 experts on an H100 and do not apply to this model).
for plan in "$PLANS"/*.json; do
  printf '%-18s %s\n' "$(basename "$plan" .json)" \
    "$("$BIN" place eval --plan "$plan" --on "$WORK/decode_bench.json" --phase decode | sed -n 2p)"
done > "$WORK/eval.txt"
for plan in "$PLANS"/*.json; do
  name=$(basename "$plan" .json)
  MOEFLOW_LOG=warn "$BIN" serve --model "$MODEL" --prefill-workers 0 --decode-workers "$RANKS" \
    --decode-placement "$plan" --route-replay "$DECODE" --port "$PORT" --grpc-port "$GRPC" \
    > "$WORK/$name.serve.log" 2>&1 &
  pid=$!
  until curl -sf "http://127.0.0.1:$PORT/health" > /dev/null; do sleep 1; done
  "$BIN" bench --base-url "http://127.0.0.1:$PORT" --num-prompts "$PROMPTS" \
    --max-concurrency "$CONC" --random-input-len "$IN" --random-output-len "$OUT_LEN" \
    --ignore-eos --result-file "$WORK/$name.bench.jsonl" > "$WORK/$name.bench.txt"
  sleep 7 # the router republishes worker stats every 5 s
  curl -sf "http://127.0.0.1:$PORT/metrics" > "$WORK/$name.metrics"
  kill "$pid"; wait "$pid" || true
  python3 - "$name" "$WORK/$name.metrics" "$WORK/$name.bench.jsonl" <<'PY'
import json, re, sys
from collections import defaultdict
name, metrics, bench = sys.argv[1:4]
v = defaultdict(dict)
for line in open(metrics):
    m = re.match(r'(moeflow:(?:expert_compute_seconds|moe_routed_seconds|moe_layer_steps|expert_load_tokens))\{([^}]*)\} (\S+)', line)
    if not m: continue
    labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
    if labels.get("group") != "decode": continue
    v[m.group(1)][(int(labels["rank"]), int(labels["layer"]))] = float(m.group(3))
ranks = sorted({r for r, _ in v["moeflow:expert_compute_seconds"]})
steps = max(v["moeflow:moe_layer_steps"].values())
comp = [sum(s for (r, _), s in v["moeflow:expert_compute_seconds"].items() if r == rk) for rk in ranks]
routed = [sum(s for (r, _), s in v["moeflow:moe_routed_seconds"].items() if r == rk) for rk in ranks]
tok = [sum(s for (r, _), s in v["moeflow:expert_load_tokens"].items() if r == rk) for rk in ranks]
b = json.loads(open(bench).readline())
print(json.dumps({"plan": name, "steps": steps,
  "busiest_compute_ms_per_step": 1e3 * max(comp) / steps,
  "mean_compute_ms_per_step": 1e3 * sum(comp) / len(comp) / steps,
  "routed_moe_ms_per_step": 1e3 * sum(routed) / len(routed) / steps,
  "token_balancedness": sum(tok) / len(tok) / max(tok),
  "compute_ms_per_rank_per_step": [round(1e3 * c / steps, 3) for c in comp],
  "output_tok_s": b.get("output_throughput"), "failed": b.get("failed")}))
PY
done | tee "$WORK/summary.jsonl"
