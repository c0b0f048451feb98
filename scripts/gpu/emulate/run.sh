#!/usr/bin/env bash
# Runs kernels/cuda/kernels.cu on the CPU (emu.h) against PyTorch float64
# cases: a check of the kernels' logic on a machine without a GPU. Needs g++
# (C++20) and a python3 with torch. Slow (one OS thread per CUDA thread):
# ~5 minutes on 2 cores; pass a case-name substring to run fewer cases.
#   scripts/gpu/emulate/run.sh [CASE_SUBSTRING]
# The dequant kernels (bit for bit vs kernels/qblock, g++ only, ~5 s) are
# checked by dequant_check.cpp through a Go test:
#   go test ./kernels/cuda -run TestDequantEmulated -v
set -eu
cd "$(dirname "$0")/../../.."
PY=${PYTHON:-python3}
REF=${TMPDIR:-/tmp}/tune-torchref
BIN=${TMPDIR:-/tmp}/tune-emucheck
rm -rf "$REF"
$PY scripts/gpu/torch_ref.py "$REF"
g++ -std=c++20 -O2 -pthread -ffp-contract=off -w -o "$BIN" scripts/gpu/emulate/check.cpp
"$BIN" "$REF" "$@"
