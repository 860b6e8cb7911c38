#!/usr/bin/env bash
# Compiles the GPU build (`--features cuda,nccl`: candle's CUDA kernels through nvcc, cudarc
# linked against CUDA and NCCL) on a machine without a GPU, so that a GPU user's first
# `cargo build --release --features cuda,nccl` is known to work. Called by .ci/run.
#
# What it needs, and where it gets it when missing (both from the package registries):
#   - nvcc and the CUDA libraries: Debian's `nvidia-cuda-toolkit` and `nvidia-cuda-dev`
#     (CUDA 11.8, bookworm's `non-free` component, which this script enables); needs root and
#     apt-get.
#   - libnccl.so to link against: the `nvidia-nccl-cu11` wheel from PyPI (Debian ships no
#     NCCL); only the library is unpacked, nothing is installed into Python.
# Whatever cannot be had is named in a one-line SKIPPED notice and the script exits 0: CI stays
# green without a CUDA toolchain, but says so. With MOEFLOW_CUDA_CHECK=require a missing piece
# fails instead (exit 1).
#
# No GPU is needed: CUDA_COMPUTE_CAP (default 80, Ampere; 90 for Hopper) replaces the device
# query of candle's kernel build. The build is a real compile, PTX and the statically built
# MoE/quantized kernels included, not a type-check.
#
#   deploy/cuda-check.sh                       # from the repository root or anywhere
#   CUDA_COMPUTE_CAP=90 deploy/cuda-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${MOEFLOW_CUDA_CHECK:-auto}
skip() {
  if [ "$mode" = require ]; then
    echo "cuda-check: FAILED: $*" >&2
    exit 1
  fi
  echo "cuda-check: SKIPPED: $*"
  exit 0
}
[ "$mode" = off ] && skip "MOEFLOW_CUDA_CHECK=off"

start=$(date +%s)

if ! command -v nvcc > /dev/null; then
  command -v apt-get > /dev/null || skip "nvcc is not installed and apt-get is not available to install nvidia-cuda-toolkit"
  [ "$(id -u)" = 0 ] || skip "nvcc is not installed and installing nvidia-cuda-toolkit needs root"
  # Debian 12 (deb822 sources) or an older sources.list: add the non-free component.
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    sed -i -E '/^Components:/{/ non-free( |$)/!s/$/ contrib non-free/}' /etc/apt/sources.list.d/debian.sources
  elif [ -f /etc/apt/sources.list ]; then
    sed -i -E '/^deb /{/ non-free( |$)/!s/$/ contrib non-free/}' /etc/apt/sources.list
  fi
  echo "cuda-check: installing nvidia-cuda-toolkit and nvidia-cuda-dev (about 0.9 GB to download)"
  apt-get update -q > /tmp/cuda-check-apt.log 2>&1 ||
    skip "apt-get update failed (see /tmp/cuda-check-apt.log)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    nvidia-cuda-toolkit nvidia-cuda-dev >> /tmp/cuda-check-apt.log 2>&1 ||
    skip "apt-get could not install nvidia-cuda-toolkit nvidia-cuda-dev (see /tmp/cuda-check-apt.log)"
  command -v nvcc > /dev/null || skip "nvidia-cuda-toolkit installed no nvcc"
fi
echo "cuda-check: $(nvcc --version | tail -n 1)"
installed=$(date +%s)

# NCCL to link against (the binary loads it from LD_LIBRARY_PATH at run time on a GPU host).
nccl_dir=${NCCL_LIB_DIR:-}
if [ -z "$nccl_dir" ]; then
  for d in /usr/lib/x86_64-linux-gnu /usr/local/cuda/lib64 /usr/lib64; do
    if [ -e "$d/libnccl.so" ]; then nccl_dir=$d; break; fi
  done
fi
if [ -z "$nccl_dir" ]; then
  command -v python3 > /dev/null || skip "libnccl.so is not installed and python3 is not available to fetch the nvidia-nccl-cu11 wheel"
  nccl_dir=$(mktemp -d)/nccl
  mkdir -p "$nccl_dir"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$nccl_dir/wheel" \
    nvidia-nccl-cu11 > /dev/null 2>&1 || skip "pip could not download the nvidia-nccl-cu11 wheel"
  python3 - "$nccl_dir" <<'EOF' || skip "the nvidia-nccl-cu11 wheel holds no libnccl.so.2"
import glob, os, sys, zipfile
out = sys.argv[1]
wheel = glob.glob(os.path.join(out, "wheel", "*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("/libnccl.so.2"))
    with open(os.path.join(out, "libnccl.so.2"), "wb") as f:
        f.write(z.read(name))
EOF
  ln -sf libnccl.so.2 "$nccl_dir/libnccl.so"
  rm -rf "$nccl_dir/wheel"
fi
echo "cuda-check: linking NCCL from $nccl_dir"

# LIBRARY_PATH reaches the linker without changing RUSTFLAGS, so the CPU build's compiled
# dependencies in the same target directory stay valid.
export LIBRARY_PATH="$nccl_dir${LIBRARY_PATH:+:$LIBRARY_PATH}"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-80}
cargo build --locked -p moeflow --features cuda,nccl
built=$(date +%s)

echo "cuda-check: OK: moeflow built with --features cuda,nccl for sm_$CUDA_COMPUTE_CAP" \
  "(toolkit $((installed - start)) s, build $((built - installed)) s)"
