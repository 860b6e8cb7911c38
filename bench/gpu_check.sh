#!/usr/bin/env bash
# One prepared check of the GPU path on a machine with one NVIDIA GPU: builds, checks and
# measures in under 8 minutes, writing everything under $OUT (default /tmp/moeflow-gpu-check).
#
#   bench/gpu_check.sh                 # from the repository root, on the GPU machine
#
# Steps (each bounded by `timeout`; a failed step is recorded and the next one still runs):
#   1. build:    `cargo build --release --features cuda,nccl` (CUDA_COMPUTE_CAP from nvidia-smi),
#                the bench_generate example and the NCCL bootstrap test. Without cargo on the
#                machine, set MOEFLOW_BIN_DIR to a directory holding prebuilt `moeflow`,
#                `bench_generate` and `nccl_bootstrap` binaries.
#   2. parity:   `moeflow generate --json` on tiny qwen3_moe, deepseek_v3 and llama4 checkpoints,
#                --device cpu vs --device cuda:0 (f32 both): the same greedy tokens, log-probs
#                within LOGPROB_TOL (default 1e-3: cuBLAS sums in another order than the CPU).
#   3. speed:    the bench preset in bf16 at batch 1 and 64 (bench_generate): tokens/s, ms per
#                decode step, and batch 1's share of the GPU's copy bandwidth.
#   4. serving:  `moeflow serve` aggregated with one worker on cuda:0, then the official `openai`
#                client suite (tests/openai). Needs the `openai` and `pytest` packages; carry
#                their wheels in $WHEELS (pip install --no-index) where nothing can be fetched.
#   5. nccl:     a one-rank group formed through the real coordinator bootstrap, plus an
#                all-to-all over NCCL (comm/tests/nccl_bootstrap.rs).
#   6. summary:  $OUT/summary.json with every step's status and figures.
set -uo pipefail
cd "$(dirname "$0")/.."

if ! command -v nvidia-smi > /dev/null 2>&1; then
  echo "gpu_check: nvidia-smi not found: this script needs a machine with an NVIDIA GPU and its driver" >&2
  exit 2
fi
OUT=${OUT:-/tmp/moeflow-gpu-check}
mkdir -p "$OUT"
WORK=$(mktemp -d)
LOGPROB_TOL=${LOGPROB_TOL:-1e-3}
started=$(date +%s)
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader | head -n 1)
cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1 | tr -d '.')
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-$cap}
echo "gpu_check: $gpu; sm_$CUDA_COMPUTE_CAP; output in $OUT"

declare -A status
record() { status[$1]=$2; echo "gpu_check: $1: $2"; }

# NCCL: a system install, else the nvidia-nccl wheel that PyTorch images carry.
nccl_dir=${NCCL_LIB_DIR:-}
if [ -z "$nccl_dir" ]; then
  nccl_dir=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2> /dev/null || true)
fi
if [ -n "$nccl_dir" ] && [ ! -e "$nccl_dir/libnccl.so" ] && [ -e "$nccl_dir/libnccl.so.2" ]; then
  mkdir -p "$WORK/nccl" && ln -sf "$nccl_dir/libnccl.so.2" "$WORK/nccl/libnccl.so"
  nccl_dir="$WORK/nccl:$nccl_dir"
fi
if [ -n "$nccl_dir" ]; then
  export LIBRARY_PATH="$nccl_dir${LIBRARY_PATH:+:$LIBRARY_PATH}"
  export LD_LIBRARY_PATH="$nccl_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

# 1. Build.
BIN=${MOEFLOW_BIN_DIR:-}
if [ -z "$BIN" ]; then
  if ! command -v cargo > /dev/null; then
    record build "failed: no cargo on this machine and MOEFLOW_BIN_DIR is not set"
  elif timeout 300 cargo build --release --locked -p moeflow --features cuda,nccl > "$OUT/build.log" 2>&1 &&
    timeout 120 cargo build --release --locked -p moeflow-worker --features cuda --example bench_generate >> "$OUT/build.log" 2>&1 &&
    timeout 120 cargo test --release --locked -p moeflow-comm --features nccl,cuda-linked --test nccl_bootstrap --no-run >> "$OUT/build.log" 2>&1; then
    mkdir -p "$WORK/bin"
    cp target/release/moeflow target/release/examples/bench_generate "$WORK/bin/"
    cp "$(ls -t target/release/deps/nccl_bootstrap-* | grep -v '\.d$' | head -n 1)" "$WORK/bin/nccl_bootstrap"
    BIN="$WORK/bin"
    record build ok
  else
    record build "failed (see build.log)"
  fi
else
  record build "prebuilt binaries from $BIN"
fi
moeflow() { timeout "${STEP_TIMEOUT:-90}" "$BIN/moeflow" "$@"; }

if [ -x "${BIN:-/nonexistent}/moeflow" ]; then
  # 2. Parity with the CPU on the three architectures.
  parity=ok
  prompt=1,5,9,13,17,21,25,29,33,37,41,45,49,53,57,61
  for arch in qwen3_moe deepseek_v3 llama4; do
    dir="$WORK/tiny-$arch"
    moeflow init-model --arch "$arch" --preset tiny --out "$dir" > /dev/null 2>&1
    moeflow generate --model "$dir" --prompt-ids "$prompt" --max-tokens 16 --temperature 0 --json \
      --device cpu --dtype f32 > "$OUT/generate-$arch-cpu.json" 2> "$OUT/generate-$arch-cpu.log"
    moeflow generate --model "$dir" --prompt-ids "$prompt" --max-tokens 16 --temperature 0 --json \
      --device cuda:0 --dtype f32 > "$OUT/generate-$arch-cuda.json" 2> "$OUT/generate-$arch-cuda.log"
    if ! python3 - "$OUT/generate-$arch-cpu.json" "$OUT/generate-$arch-cuda.json" "$LOGPROB_TOL" > "$OUT/parity-$arch.txt" 2>&1 <<'EOF'
import json, sys
cpu, gpu = (json.load(open(p)) for p in sys.argv[1:3])
tol = float(sys.argv[3])
def toks(r): return r.get("token_ids") or r.get("tokens")
assert toks(cpu) == toks(gpu), f"tokens differ: cpu {toks(cpu)} gpu {toks(gpu)}"
diff = max(abs(a - b) for a, b in zip(cpu["logprobs"], gpu["logprobs"]))
print(f"tokens equal ({len(toks(cpu))}), max |logprob diff| {diff:.2e}")
assert diff <= tol, f"log-probs differ by {diff} > {tol}"
EOF
    then
      parity="failed ($arch, see parity-$arch.txt)"
    fi
    echo "gpu_check: parity $arch: $(tail -n 1 "$OUT/parity-$arch.txt")"
  done
  record parity "$parity"

  # 3. Speed of the bench preset in bf16.
  moeflow init-model --arch qwen3_moe --preset bench --out "$WORK/bench" > /dev/null 2>&1
  if STEP_TIMEOUT=180 timeout 180 "$BIN/bench_generate" --model "$WORK/bench" --device cuda:0 --dtype bf16 \
    --batch 1,64 --prompt-len 128 --new-tokens 64 --repeats 3 > "$OUT/bench-bf16.json" 2> "$OUT/bench-bf16.log"; then
    record speed ok
  else
    record speed "failed (see bench-bf16.log)"
  fi

  # 4. Serving with the official OpenAI client.
  if [ -n "${WHEELS:-}" ]; then
    python3 -m pip install -q --no-index --find-links "$WHEELS" --target "$WORK/site" openai pytest > "$OUT/pip.log" 2>&1 &&
      export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  if python3 -c 'import openai, pytest' 2> /dev/null; then
    port=18321
    MOEFLOW_HOME="$WORK/home" "$BIN/moeflow" serve --port "$port" --grpc-port 18322 \
      --prefill-workers 0 --decode-workers 1 --worker-args "--device cuda:0" > "$OUT/serve.log" 2>&1 &
    server=$!
    for _ in $(seq 1 120); do
      curl -sf "http://127.0.0.1:$port/health" > /dev/null && break
      kill -0 "$server" 2> /dev/null || break
      sleep 0.5
    done
    if MOEFLOW_BASE_URL="http://127.0.0.1:$port/v1" timeout 120 python3 -m pytest -q tests/openai > "$OUT/openai.log" 2>&1; then
      record serving ok
    else
      record serving "failed (see openai.log, serve.log)"
    fi
    kill -TERM "$server" 2> /dev/null
    wait "$server" 2> /dev/null
  else
    record serving "skipped: the openai and pytest packages are not importable (carry wheels in \$WHEELS)"
  fi

  # 5. NCCL through the real bootstrap.
  if [ -x "$BIN/nccl_bootstrap" ] &&
    timeout 120 "$BIN/nccl_bootstrap" --nocapture > "$OUT/nccl.log" 2>&1; then
    record nccl ok
  else
    record nccl "failed (see nccl.log)"
  fi
fi

# 6. Summary.
{
  echo "{"
  echo "  \"gpu\": \"$gpu\","
  echo "  \"compute_cap\": \"$CUDA_COMPUTE_CAP\","
  echo "  \"seconds\": $(($(date +%s) - started)),"
  for k in build parity speed serving nccl; do
    echo "  \"$k\": \"${status[$k]:-not run}\","
  done
  echo "  \"bench\": $(cat "$OUT/bench-bf16.json" 2> /dev/null || echo null)"
  echo "}"
} > "$OUT/summary.json"
echo "gpu_check: done in $(($(date +%s) - started)) s; $OUT/summary.json"
case "${status[build]:-}" in failed*) exit 1 ;; esac
exit 0
