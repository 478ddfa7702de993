#!/usr/bin/env bash
# Builds, on a machine without a GPU, everything the GPU check needs into one git-ignored folder
# (default gpu-bundle/): the release GPU test, bench and example binaries (kernels required, no
# spills; as bin.tar.xz), the PTX emulator library (emulator/, for gpu-check.sh's `emulator` part),
# the golden data, the peers' baseline script, scripts/gpu-check.sh and scripts/compare-dumps.py.
#
#   scripts/gpu-bundle.sh [DIR]
# then, on the GPU machine, from the repository root: bash gpu-bundle/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-gpu-bundle}"
eval "$(scripts/install-cuda-toolchain.sh)"
export LORA_KERNELS_REQUIRE_KERNELS=1 LORA_KERNELS_DENY_SPILLS=1
# The GPU machines are Hopper (H100/H200): SASS for sm_90a keeps the bundle small (the default
# build's other targets are compiled, spill-checked and embedded by every normal build); sm_80 comes
# along so that the fatbin's PTX entry is compute_80, the PTX the emulator runs (it reports sm_80).
# A target folder of its own keeps the two builds from recompiling each other.
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90a,80}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/gpu-bundle}"
cargo build --release --tests --benches --examples
rm -rf "$dir" && mkdir -p "$dir/bin"
# The executables cargo built for targets of KIND (test, bench), as "name path" lines.
executables() {
    python3 -c '
import json, sys
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == [sys.argv[1]]:
        print(m["target"]["name"], m["executable"])' "$1"
}
cargo test --release --no-run --message-format=json 2>/dev/null | executables test \
    | while read -r name exe; do
        case "$name" in golden|lora_gpu|dora_gpu|quant4_gpu|int8_gpu|mixed_gpu|linear_gpu|layer|graphs|errors) cp "$exe" "$dir/bin/$name";; esac
    done
cargo bench --no-run --message-format=json 2>/dev/null | executables bench \
    | while read -r name exe; do cp "$exe" "$dir/bin/bench_$name"; done
cp "$CARGO_TARGET_DIR/release/examples/quickstart" "$dir/bin/quickstart"
strip "$dir"/bin/*
# Every binary embeds the same kernels: one xz stream with a 64 MiB window stores them once (about
# 4 MB instead of 120), well inside the device tool's 64 MiB carry. gpu-check.sh unpacks it.
tar -C "$dir" -cf - bin | xz -9 -T0 >"$dir/bin.tar.xz"
rm -rf "$dir/bin"
cp -r tests/data/golden "$dir/golden"
cp scripts/gpu-check.sh "$dir/gpu-check.sh"
cp scripts/compare-dumps.py "$dir/compare-dumps.py"
# The emulator cdylib (a dev-dependency: the test build above made it); never beside the binaries,
# so the GPU steps cannot pick it up.
mkdir -p "$dir/emulator"
cp "$CARGO_TARGET_DIR/release/deps/liblora_kernels_emulator.so" "$dir/emulator/"
strip "$dir/emulator/liblora_kernels_emulator.so"
if [ -f ../shared/gpu/peer_baseline.py ]; then cp ../shared/gpu/peer_baseline.py "$dir/"; fi
# bitsandbytes' wheel (43 MB, the version the golden cases came from), so the peers' baseline times its
# 4-bit and 8-bit layers on the same card; LORA_KERNELS_BUNDLE_BNB=0 leaves it out.
if [ "${LORA_KERNELS_BUNDLE_BNB:-1}" = 1 ]; then
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --platform manylinux_2_24_x86_64 --python-version 3.12 bitsandbytes==0.50.2 -d "$dir/wheels" ||
        echo "no bitsandbytes wheel: the peers' baseline will skip bitsandbytes"
fi
cat "$CARGO_TARGET_DIR"/release/build/lora-kernels-*/out/ptxas-*.log >"$dir/ptxas.log" 2>/dev/null || true
tar -tvJf "$dir/bin.tar.xz"
du -sh "$dir"
echo "bundle ready: send $dir with the device tool's carry and run: bash $dir/gpu-check.sh"
