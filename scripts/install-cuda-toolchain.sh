#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 compiler (PyPI wheels, no GPU needed) into a cache folder outside the
# repository and prints the environment that builds the kernels with it.
#
#   eval "$(scripts/install-cuda-toolchain.sh)"     # exports NVCC, CUDARC_CUDA_VERSION, PATH
#
# Pinned to 13.0: the GPU machines run a CUDA 13.0 driver, and a driver cannot load PTX made by a newer
# toolkit. The folder defaults to ${XDG_CACHE_HOME:-$HOME/.cache}/lora-kernels/cuda-13.0 and can be set
# with LORA_KERNELS_CUDA_DIR. A second run finds the wheels in place and downloads nothing.
set -euo pipefail

dir="${LORA_KERNELS_CUDA_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lora-kernels/cuda-13.0}"
nvcc="$dir/nvidia/cu13/bin/nvcc"
python="${PYTHON:-python3}"

if [ ! -x "$nvcc" ] || ! "$nvcc" --version 2>/dev/null | grep 'release 13.0' >/dev/null; then
    echo "installing the CUDA 13.0 compiler wheels into $dir" >&2
    mkdir -p "$dir"
    "$python" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
        --upgrade --target "$dir" \
        nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 \
        nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-cccl==13.0.85 >&2
fi

# nvcc from the wheels looks for cicc and the headers relative to itself; make sure the layout is there.
"$nvcc" --version >&2

cat <<ENV
export NVCC="$nvcc"
export CUDA_HOME="$dir/nvidia/cu13"
export CUDARC_CUDA_VERSION=13000
ENV
