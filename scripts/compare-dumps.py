#!/usr/bin/env python3
"""Compares the outputs two runs of the same tests wrote with LORA_KERNELS_DUMP_DIR (tests/common's
`dump`): typically the GPU's and the emulator's, on the same inputs (the tests' seeded data and the
golden cases).

    scripts/compare-dumps.py GPU_DIR EMULATOR_DIR

Each output is bit-identical, or differs; a differing output is a failure where its golden check is
exact (tolerance 0), and is listed with its relative difference otherwise (mma accumulation order and
`.approx` results are implementation-defined, so the emulator need not match the GPU bit for bit
there). An output written by one run only, or a non-finite difference, is a failure. Exit status 1
on any failure.
"""
import math
import os
import struct
import sys


def manifest(folder):
    entries = {}
    path = os.path.join(folder, "manifest.tsv")
    if not os.path.isfile(path):
        print("no outputs in %s (no %s)" % (folder, path))
        return entries
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 3:
                entries[parts[0]] = None if parts[2] == "-" else float(parts[2])
    return entries


def values(folder, label):
    with open(os.path.join(folder, label + ".f64"), "rb") as f:
        data = f.read()
    return struct.unpack("<%dd" % (len(data) // 8), data)


def rel_diff(a, b):
    """||a - b|| / ||a|| (the golden runner's rel_error, a as the reference)."""
    if len(a) != len(b):
        return math.inf
    diff = sum((x - y) ** 2 for x, y in zip(a, b))
    norm = sum(x * x for x in a)
    if any(not math.isfinite(y) for y in b) != any(not math.isfinite(x) for x in a):
        return math.inf
    return math.sqrt(diff) if norm == 0 else math.sqrt(diff / norm)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    gpu_dir, emu_dir = sys.argv[1], sys.argv[2]
    gpu, emu = manifest(gpu_dir), manifest(emu_dir)
    failures, identical, differing = [], 0, []
    for label in sorted(set(gpu) | set(emu)):
        if label not in gpu or label not in emu:
            failures.append("%s: only in the %s run" % (label, "GPU" if label in gpu else "emulator"))
            continue
        a, b = values(gpu_dir, label), values(emu_dir, label)
        same = len(a) == len(b) and all(
            struct.pack("<d", x) == struct.pack("<d", y) or (math.isnan(x) and math.isnan(y))
            for x, y in zip(a, b)
        )
        if same:
            identical += 1
            continue
        err = rel_diff(a, b)
        tol = gpu[label]
        if not math.isfinite(err):
            failures.append("%s: lengths or non-finite values differ" % label)
        elif tol == 0.0:
            failures.append("%s: exact on both, yet differs (rel %.3e)" % (label, err))
        else:
            differing.append((err, label, tol))
    total = identical + len(differing) + len(failures)
    print("emulator vs GPU: %d outputs, %d bit-identical, %d differ within their checks, %d failures"
          % (total, identical, len(differing), len(failures)))
    for err, label, tol in sorted(differing, reverse=True)[:40]:
        print("  differs: %-70s rel %.3e%s" % (label, err, "" if tol is None else "  (golden tol %.0e)" % tol))
    for f in failures:
        print("  FAILED: " + f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
