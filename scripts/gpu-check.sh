#!/usr/bin/env bash
# gpu-check.sh: everything we check on a lent GPU machine, in one call of
# about 6 minutes. It builds nothing (the device has no Go): `make gpu-check`
# builds bin/tune and bin/cuda.test here first, and the device tool carries
# bin/ over:
#
#   make gpu-check                                  # here
#   run(command="scripts/gpu-check.sh", carry=["bin"], timeout_s=480)   # device
#
# Stages (each under its own timeout; a failing stage does not stop the rest):
#   1. nvidia-smi and `tune env`
#   2. op-by-op: cuda backend vs the CPU backend (fp32 GEMMs), random inputs
#      with odd sizes, and the tiny models of testdata/models end to end
#      (logits, window NLL, full training pass loss and gradients)
#   3. the same with TUNE_CUDA_GEMM=bf16 (bf16 GEMM inputs, fp32 accumulate)
#   4. PyTorch float64 oracle (scripts/gpu/torch_ref.py) vs cpu and cuda
#   5. throughput: GEMM, attention fwd/bwd, a LoRA-sized step; torch's
#      GEMM and SDPA at the same shapes as the ceiling
#   6. `tune eval ppl` on a tiny model, cpu vs cuda, when tune has --device
# Output: $OUT/gpu-check.txt (everything) and per-stage logs in $OUT; the
# summary table is printed last. It never resets or reconfigures the GPU.
#
# Without a GPU (here) it runs as a dry run: the GPU tests skip with their
# reason instead of failing (GPU_CHECK_DRY=1 forces that).
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
LOG=$OUT/gpu-check.txt
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1

TEST=$ROOT/bin/cuda.test
TUNE=$ROOT/bin/tune
PY=${PYTHON:-python3}
declare -a SUMMARY
# Stages stop starting after BUDGET seconds, and each is cut to end by
# BUDGET+30, so the whole run stays near 6 minutes whatever hangs.
BUDGET=${GPU_CHECK_BUDGET:-330}

REQUIRE=1
if [ "${GPU_CHECK_DRY:-0}" = 1 ] || ! command -v nvidia-smi >/dev/null 2>&1; then
	REQUIRE=0
	echo "== dry run: no nvidia-smi (or GPU_CHECK_DRY=1); GPU tests will skip"
fi

stage() { # stage NAME TIMEOUT CMD...: run, log to $OUT/NAME.log, record status
	local name=$1 to=$2
	shift 2
	if ((SECONDS > BUDGET)); then
		SUMMARY+=("$(printf '%-14s %-28s' "$name" "skipped (past ${BUDGET}s budget)")")
		return
	fi
	to=$((to < BUDGET + 30 - SECONDS ? to : BUDGET + 30 - SECONDS))
	echo
	echo "== $name (timeout ${to}s) $(date -u +%H:%M:%S)"
	local t0=$SECONDS
	timeout --kill-after=10 "$to" "$@" >"$OUT/$name.log" 2>&1
	local rc=$?
	grep -v -E '^=== RUN' "$OUT/$name.log" | tail -n 40
	local st=ok
	[ $rc -ne 0 ] && st="FAIL rc=$rc"
	[ $rc -eq 124 ] && st="TIMEOUT"
	if grep -q -- '--- SKIP' "$OUT/$name.log" && ! grep -q -- '--- PASS' "$OUT/$name.log"; then
		st="$st (GPU tests skipped)"
	fi
	SUMMARY+=("$(printf '%-14s %-28s %4ss' "$name" "$st" $((SECONDS - t0)))")
}

for f in "$TEST" "$TUNE"; do
	[ -x "$f" ] || { echo "missing $f: run make gpu-check on the build machine and carry bin/"; exit 2; }
done

echo "== gpu-check $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
stage nvidia-smi 20 nvidia-smi
stage tune-env 30 "$TUNE" env

export TUNE_CUDA_REQUIRE=$REQUIRE
# The test binary runs from its package folder, as go test would (testdata paths).
cd "$ROOT/kernels/cuda"
rm -f "$OUT"/ops-*.txt "$OUT/torch-ref.txt"
# One process per test: a device fault (which poisons the CUDA context) in
# one loses only that test's rows. TUNE_CUDA_SYNC=1 waits after every
# launch so a fault names its kernel.
export TUNE_CUDA_SYNC=1
stage ci-side 20 "$TEST" -test.count=1 -test.v -test.run 'TestPTX|TestNoDriver|TestSearch|TestOpenLibrary|TestBlocks|TestSupports'
for t in Embedding MatMul RMSNorm RoPE Attention Elementwise SoftmaxNLL AdamW BF16Round; do
	TUNE_CUDA_REPORT=$OUT/ops-fp32.txt stage "ops-$t" 40 "$TEST" -test.count=1 -test.v -test.timeout=35s -test.run "^TestOps$t\$"
done
for t in ModelForward ModelTrainPass; do
	TUNE_CUDA_REPORT=$OUT/ops-fp32.txt stage "$t" 60 "$TEST" -test.count=1 -test.v -test.timeout=55s -test.run "^Test$t\$"
done
for t in OpsMatMul ModelForward; do
	TUNE_CUDA_GEMM=bf16 TUNE_CUDA_REPORT=$OUT/ops-bf16.txt stage "bf16-$t" 40 "$TEST" -test.count=1 -test.v -test.timeout=35s -test.run "^Test$t\$"
done

if $PY -c 'import torch' 2>/dev/null; then
	stage torch-ref-gen 60 $PY "$ROOT/scripts/gpu/torch_ref.py" "$OUT/torchref"
	TUNE_TORCH_REF=$OUT/torchref TUNE_CUDA_REPORT=$OUT/torch-ref.txt stage torch-ref 40 "$TEST" -test.count=1 -test.v \
		-test.run 'TestTorchRef'
else
	echo "== no python3 with torch: PyTorch oracle skipped"
	SUMMARY+=("torch-ref      skipped (no torch)")
fi

rm -f "$OUT/bench.txt"
export TUNE_CUDA_SYNC=0
TUNE_CUDA_BENCH=1 TUNE_CUDA_BENCH_OUT=$OUT/bench.txt stage bench 90 "$TEST" -test.count=1 -test.v -test.run 'TestBench'
if [ $REQUIRE = 1 ] && $PY -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
	stage torch-bench 60 $PY "$ROOT/scripts/gpu/torch_ref.py" "$OUT/torchref-bench" --bench
fi

cd "$ROOT"
# End to end through the CLI, once tune has --device (the lead's plumbing).
if "$TUNE" eval ppl --help 2>/dev/null | grep -q -- '--device'; then
	printf 'The quick brown fox jumps over the lazy dog. %.0s' $(seq 40) >"$OUT/ppl.txt"
	for dev in cpu cuda; do
		stage "ppl-$dev" 60 "$TUNE" eval ppl --device "$dev" --model testdata/models/qwen3-untied-bf16 --data "$OUT/ppl.txt" --ctx 64 --json
	done
	echo "ppl cpu:  $(tail -n 1 "$OUT/ppl-cpu.log")"
	echo "ppl cuda: $(tail -n 1 "$OUT/ppl-cuda.log")"
else
	echo "== tune eval ppl has no --device yet: CLI end-to-end skipped (TestModel* covers the model path)"
fi

echo
echo "================ summary ================"
for f in "$OUT/ops-fp32.txt" "$OUT/ops-bf16.txt" "$OUT/torch-ref.txt"; do
	if [ -s "$f" ]; then
		echo "-- $(basename "$f")"
		grep -E 'FAIL$' "$f" || echo "   all $(grep -c ' ok$' "$f") checks within tolerance"
	fi
done
if [ -s "$OUT/bench.txt" ]; then
	echo "-- throughput"
	cat "$OUT/bench.txt"
	grep -h '^torch ' "$OUT/torch-bench.log" 2>/dev/null
fi
echo "-- stages"
printf '%s\n' "${SUMMARY[@]}"
echo "full log: $LOG"
