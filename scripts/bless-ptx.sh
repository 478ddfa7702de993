#!/usr/bin/env bash
# Regenerates the committed ptx/<stem>.ptx from kernels/<stem>.cu with the pinned nvcc (13.0.88, the
# PTX entry's flags in build.rs: -O3 -std=c++17 -lineinfo -I kernels, compute_80), made identical on
# every machine (tests/committed_ptx.rs says how). Run it after changing a kernel; CI fails on stale PTX.
#
#   scripts/bless-ptx.sh
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/install-cuda-toolchain.sh)"
LORA_KERNELS_BLESS=1 cargo test --test committed_ptx -- --nocapture
git status --short -- ptx/
