#!/usr/bin/env bash
# The GPU check, run on the GPU machine from the folder scripts/gpu-bundle.sh made:
# device and driver info; every GPU test with GPU tests required; compute-sanitizer memcheck and
# racecheck over the GPU tests at small sizes; the benchmark sweep; the peers' baseline (peft, cuBLAS)
# in the same run; the PTX emulator against the GPU on the same inputs. Full logs go to $OUT (default
# ./gpu-check-out); a short table comes last. One refused tool (sanitizer "Device not supported") is
# reported and the rest carries on.
#
#   bash gpu-check.sh [all|tests|sanitize|bench|emulator]     (default: all)
#
# `emulator`: the golden runner and the GPU tests once on the GPU and once on the emulator
# (LORA_KERNELS_EMULATOR=1, the bundle's emulator/liblora_kernels_emulator.so), each writing every
# compared output (LORA_KERNELS_DUMP_DIR), then compare-dumps.py: bit for bit, or the relative
# difference where the two may differ (mma accumulation order, .approx); a failure where the golden
# check is exact or an output is missing. Every other step runs with LORA_KERNELS_EMULATOR=0, so the
# GPU steps never fall back to the emulator.
#
# A device call may run 10 minutes at most: `tests` then `sanitize bench` fit two calls. No step starts
# once GPU_CHECK_BUDGET_S seconds (default 540) have passed; skipped steps are listed as such.
set -uo pipefail
mode="${1:-all}"
budget="${GPU_CHECK_BUDGET_S:-540}"
wants() { [ "$mode" = all ] || [[ " $mode " == *" $1 "* ]]; }
here="$(cd "$(dirname "$0")" && pwd)"
# The binaries travel as bin.tar.xz (see gpu-bundle.sh); tar's xz, else Python's lzma, unpacks them.
bin="$here/bin"
if [ ! -d "$bin" ] && [ -f "$here/bin.tar.xz" ]; then
    bin="${TMPDIR:-/tmp}/lora-kernels-gpu-check"
    rm -rf "$bin" && mkdir -p "$bin"
    tar -C "$bin" --strip-components=1 -xJf "$here/bin.tar.xz" 2>/dev/null ||
        python3 -c 'import sys, tarfile, os
t = tarfile.open(sys.argv[1])
for m in t.getmembers():
    if m.isfile():
        m.name = os.path.basename(m.name)
        t.extract(m, sys.argv[2])' "$here/bin.tar.xz" "$bin"
    chmod +x "$bin"/*
fi
out="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$out"
log="$out/check.log"
: >"$log"
say() { echo "$*" | tee -a "$log"; }
declare -a summary

# Libraries cudarc loads at run time: libcuda (driver), libcublas (bench baseline).
libdirs="/usr/local/cuda/lib64"
for d in $(python3 -c 'import site,glob; print(" ".join(sorted({p.rsplit("/",1)[0] for s in site.getsitepackages() for p in glob.glob(s+"/nvidia/**/libcublas.so*", recursive=True)})))' 2>/dev/null); do
    libdirs="$libdirs:$d"
done
export LD_LIBRARY_PATH="$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LORA_KERNELS_GOLDEN_DIR="$here/golden" LORA_KERNELS_REQUIRE_GPU=1 LORA_KERNELS_EMULATOR=0
say "== device"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | tee -a "$log"
say "libcuda: $(ldconfig -p | grep 'libcuda.so.1' | sed -n 1p || echo 'not in ldconfig')"
say "libcublas: $(for d in ${LD_LIBRARY_PATH//:/ }; do ls "$d"/libcublas.so* 2>/dev/null; done | head -n 1)"

step() { # name, timeout, command...
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    if [ $((SECONDS + 10)) -gt "$budget" ]; then
        summary+=("$(printf '%-28s %-24s' "$name" "SKIPPED (time budget)")")
        say "-- $name: skipped, ${SECONDS}s of ${budget}s used"
        return
    fi
    [ $((SECONDS + limit)) -gt "$budget" ] && limit=$((budget - SECONDS))
    say "== $name: $*"
    timeout "$limit" "$@" >"$out/step.log" 2>&1
    local rc=$?
    cat "$out/step.log" >>"$log"
    local verdict="pass"
    [ $rc -ne 0 ] && verdict="FAIL (rc $rc)"
    [ $rc -eq 124 ] && verdict="TIMEOUT after ${limit}s"
    if grep -q "Device not supported\|LibraryNotLoaded" "$out/step.log"; then verdict="REFUSED by the machine"; fi
    summary+=("$(printf '%-28s %-24s %4ss  %s' "$name" "$verdict" $((SECONDS - t0)) "$(grep -E '^(golden:|test result:|emulator vs GPU:|=+ (ERROR SUMMARY|RACECHECK SUMMARY))' "$out/step.log" | tail -n 2 | tr '\n' ' ')")")
    say "-- $name: $verdict"
}

if wants tests; then
step "golden" 60 "$bin/golden"
step "lora_gpu" 120 "$bin/lora_gpu" --test-threads=1
step "dora_gpu" 120 "$bin/dora_gpu" --test-threads=1
step "quant4_gpu" 120 "$bin/quant4_gpu" --test-threads=1
step "int8_gpu" 120 "$bin/int8_gpu" --test-threads=1
step "mixed_gpu" 120 "$bin/mixed_gpu" --test-threads=1
step "linear_gpu" 120 "$bin/linear_gpu" --test-threads=1
step "layer" 60 "$bin/layer" --test-threads=1
step "graphs" 60 "$bin/graphs" --test-threads=1
step "backward_gpu" 120 "$bin/backward_gpu" --test-threads=1
step "training" 60 "$bin/training" --test-threads=1
step "errors" 30 "$bin/errors"
step "quickstart" 30 "$bin/quickstart" "$here/golden"
fi
cs=/usr/local/cuda/bin/compute-sanitizer
command -v compute-sanitizer >/dev/null && cs=compute-sanitizer
if wants sanitize; then
export LORA_KERNELS_SMALL=1
step "memcheck golden" 90 "$cs" --tool memcheck --error-exitcode 9 "$bin/golden"
step "memcheck lora_gpu" 150 "$cs" --tool memcheck --error-exitcode 9 "$bin/lora_gpu" --test-threads=1
step "memcheck dora_gpu" 150 "$cs" --tool memcheck --error-exitcode 9 "$bin/dora_gpu" --test-threads=1
step "memcheck quant4_gpu" 150 "$cs" --tool memcheck --error-exitcode 9 "$bin/quant4_gpu" --test-threads=1
step "memcheck int8_gpu" 150 "$cs" --tool memcheck --error-exitcode 9 "$bin/int8_gpu" --test-threads=1
step "memcheck mixed_gpu" 150 "$cs" --tool memcheck --error-exitcode 9 "$bin/mixed_gpu" --test-threads=1
step "memcheck linear_gpu" 150 "$cs" --tool memcheck --error-exitcode 9 "$bin/linear_gpu" --test-threads=1
step "memcheck layer" 120 "$cs" --tool memcheck --error-exitcode 9 "$bin/layer" --test-threads=1
step "memcheck graphs" 90 "$cs" --tool memcheck --error-exitcode 9 "$bin/graphs" --test-threads=1
step "memcheck backward_gpu" 150 "$cs" --tool memcheck --error-exitcode 9 "$bin/backward_gpu" --test-threads=1
step "racecheck int8 merge" 120 "$cs" --tool racecheck --error-exitcode 9 "$bin/int8_gpu" --test-threads=1 int8_merge_f32
step "racecheck lora_gpu" 120 "$cs" --tool racecheck --error-exitcode 9 "$bin/lora_gpu" --test-threads=1 repeated_launches
unset LORA_KERNELS_SMALL
fi
if wants bench; then
LORA_KERNELS_BENCH_OUT="$out/bench.json" step "bench lora_forward" 150 "$bin/bench_lora_forward" --bench
sed -n '/^fused LoRA forward vs unfused/,$p' "$out/step.log" >"$out/bench_table.txt"
LORA_KERNELS_BENCH_OUT="$out/bench_dora.json" step "bench dora" 150 "$bin/bench_dora" --bench
sed -n '/^DoRA weight norm, bf16/,$p' "$out/step.log" >>"$out/bench_table.txt"
LORA_KERNELS_BENCH_OUT="$out/bench_quantized.json" step "bench quantized" 150 "$bin/bench_quantized" --bench
sed -n '/^quantised products vs cuBLAS/,$p' "$out/step.log" >>"$out/bench_table.txt"
LORA_KERNELS_BENCH_OUT="$out/bench_adapters.json" step "bench adapters" 150 "$bin/bench_adapters" --bench
sed -n '/^mixed batch (4 adapters/,$p' "$out/step.log" >>"$out/bench_table.txt"
LORA_KERNELS_BENCH_OUT="$out/bench_backward.json" step "bench backward" 150 "$bin/bench_backward" --bench
sed -n '/^training backward (dX/,$p' "$out/step.log" >>"$out/bench_table.txt"
# bitsandbytes from the bundled wheel, into a scratch folder on PYTHONPATH (the image lacks it).
if ls "$here"/wheels/bitsandbytes-*.whl >/dev/null 2>&1; then
    bnb_dir="${TMPDIR:-/tmp}/lora-kernels-bnb"
    python3 -m pip install --quiet --disable-pip-version-check --no-index --no-deps --target "$bnb_dir" \
        "$here"/wheels/bitsandbytes-*.whl >>"$log" 2>&1 &&
        export PYTHONPATH="$bnb_dir${PYTHONPATH:+:$PYTHONPATH}" && say "bitsandbytes: from the bundled wheel"
fi
if [ -f "$here/peer_baseline.py" ]; then
    PYTHONUNBUFFERED=1 step "peers (peft, cuBLAS)" 150 python3 "$here/peer_baseline.py" --quick --out "$out/peer.json"
    # Its output is in check.log (between "== peers" and "-- peers"): no separate peer.log, so that
    # $out holds at most 8 files (check.log, summary.txt, five bench JSONs, peer.json).
fi
fi
if wants emulator; then
emu_lib="$here/emulator/liblora_kernels_emulator.so"
if [ -f "$emu_lib" ]; then
    dumps="${TMPDIR:-/tmp}/lora-kernels-dumps"
    # cudarc tries libcuda.so before libcuda.so.1: a folder first on LD_LIBRARY_PATH with both names
    # pointing at the emulator keeps the real driver out of the emulator's runs.
    shim="$dumps/libcuda-shim"
    rm -rf "$dumps" && mkdir -p "$shim"
    ln -s "$emu_lib" "$shim/libcuda.so" && ln -s "$emu_lib" "$shim/libcuda.so.1"
    gpu_env=(env LORA_KERNELS_DUMP_DIR="$dumps/gpu")
    emu_env=(env LORA_KERNELS_DUMP_DIR="$dumps/emulator" LORA_KERNELS_EMULATOR=1
        LORA_KERNELS_EMULATOR_LIB="$emu_lib" LD_LIBRARY_PATH="$shim:$LD_LIBRARY_PATH")
    step "golden (gpu, dumps)" 60 "${gpu_env[@]}" "$bin/golden"
    step "golden (emulator, dumps)" 240 "${emu_env[@]}" "$bin/golden"
    for t in lora_gpu dora_gpu quant4_gpu int8_gpu mixed_gpu linear_gpu layer; do
        step "$t (gpu, dumps)" 60 "${gpu_env[@]}" "$bin/$t" --test-threads=1
        step "$t (emulator, dumps)" 240 "${emu_env[@]}" "$bin/$t"
    done
    step "emulator vs gpu" 60 python3 "$here/compare-dumps.py" "$dumps/gpu" "$dumps/emulator"
else
    say "-- emulator: no $emu_lib in the bundle"
    summary+=("$(printf '%-28s %-24s' "emulator vs gpu" "SKIPPED (no emulator)")")
fi
fi
rm -f "$out/step.log"

{
    echo
    echo "== benchmark table"
    cat "$out/bench_table.txt" 2>/dev/null
    echo
    echo "== summary ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null), $(date -u +%F))"
    printf '%s\n' "${summary[@]}"
} | tee -a "$log" >"$out/summary.txt"
rm -f "$out/bench_table.txt"  # now in summary.txt (at most 8 files come back)
cat "$out/summary.txt"
