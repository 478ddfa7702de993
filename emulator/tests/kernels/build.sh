#!/usr/bin/env bash
# Regenerates the committed PTX of the emulator's own test kernels:
#   emulator/tests/kernels/<name>.cu  ->  emulator/tests/kernels/<name>.ptx
#
# Usage: emulator/tests/kernels/build.sh [name ...]     (default: every .cu here)
#
# The flags are the crate's: compute_80 PTX, -O3, C++17, and -lineinfo so that the `.loc`
# directives let the emulator's checkers name the `.cu` file:line of a bad access. nvcc is the
# pinned 13.0 toolchain (scripts/install-cuda-toolchain.sh puts it in ~/.cache/lora-kernels);
# NVCC=/path/to/nvcc overrides it. The tests read only the committed .ptx files, so neither
# nvcc nor a GPU is needed to run them; rerun this script after editing a .cu and commit both.
# nvcc writes absolute `.file` paths: the tests match only the file's base name and line.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
nvcc="${NVCC:-$HOME/.cache/lora-kernels/cuda-13.0/nvidia/cu13/bin/nvcc}"
if [[ ! -x "$nvcc" ]]; then
    echo "nvcc not found at $nvcc (set NVCC=...)" >&2
    exit 1
fi
cd "$here"
if [[ $# -gt 0 ]]; then
    names=("$@")
else
    names=()
    for f in *.cu; do names+=("${f%.cu}"); done
fi
for name in "${names[@]}"; do
    echo "nvcc $name.cu -> $name.ptx"
    "$nvcc" -ptx -arch=compute_80 -O3 -lineinfo -std=c++17 "$name.cu" -o "$name.ptx"
done
