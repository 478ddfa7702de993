#!/usr/bin/env bash
# One line per compiled kernel and architecture: registers, stack frame and spill bytes, read from the
# ptxas reports build.rs keeps in OUT_DIR. Usage: scripts/ptxas-report.sh [profile-dir, default target/debug]
set -euo pipefail
dir="${1:-target/debug}"
out=$(ls -td "$dir"/build/lora-kernels-*/out 2>/dev/null | head -n 1 || true)
if [ -z "$out" ] || ! ls "$out"/ptxas-*.log >/dev/null 2>&1; then
    echo "no ptxas reports under $dir (kernels not built?)"
    exit 0
fi
awk '
    /Compiling entry function/ { line = $0; sub(/.*function ./, "", line); name = line; sub(/. for .*/, "", name);
                                 arch = line; sub(/.* for ./, "", arch); sub(/.$/, "", arch) }
    /bytes stack frame/        { stack = $1; spill = $5 + $9 }
    /Used [0-9]+ registers/    { regs = $0; sub(/.*Used /, "", regs); sub(/ registers.*/, "", regs);
                                 printf "%-34s %-7s %3d regs  %4d B stack  %4d B spilled\n", name, arch, regs, stack, spill }
' "$out"/ptxas-*.log | sort
