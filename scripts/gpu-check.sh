#!/usr/bin/env bash
# gpu-check.sh: everything we check on a lent GPU machine, in one call of
# about 7 minutes. It builds nothing (the device has no Go): `make gpu-check`
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
#      (logits, window NLL, full training pass loss and gradients); the
#      dequant kernels bit for bit vs kernels/qblock, and matmul forward/din
#      on every block-quantized dtype (dequantized on the device) vs the CPU
#   3. LoRA training: loss and LoRA grads vs PyTorch (testdata/golden), a
#      50-step fine-tune on CUDA vs the CPU (loss curves as a table)
#   4. the same with TUNE_CUDA_GEMM=bf16 (bf16 GEMM inputs, fp32 accumulate)
#   5. PyTorch float64 oracle (scripts/gpu/torch_ref.py) vs cpu and cuda
#   6. transformers + PEFT (scripts/gpu/peft_ref.py): LoRA loss and grads
#      of a tiny Qwen3, vs tune on cpu and cuda
#   7. `tune lora --device cuda` vs `--device cpu` on recipes/tiny-test.yaml
#      (metrics.jsonl: loss per step, mfu), and `tune eval ppl` cpu vs cuda
#   8. throughput: GEMM, attention fwd/bwd (torch's GEMM and SDPA as the
#      ceiling), then LoRA r=16 training of a Qwen3-8B-shaped model with
#      random bf16 weights: the device-resident pass with the optimizer on
#      the device (seq 2048 without and with checkpointing, seq 8192 with),
#      then through train.Trainer (seq 2048): tokens/s, MFU, peak GPU memory;
#      and QLoRA (the linears in NF4 on the device): base and step memory
# The device-resident LoRA pass (kernels/cuda/devpass.go) is checked in
# stages 2-4 (DevicePassGPU: loss and LoRA grads vs the CPU's model.Pass on
# the tiny models; DevicePassQuantizedGPU: the same on NF4, INT4, INT8, Q8_0
# bases and a Q8_0 GGUF), and LoRAGolden, FineTune50 and `tune lora --device
# cuda` run through it too (train.NewLoRA picks it; TUNE_CUDA_PASS=host
# does not).
# Output in $OUT (at most 8 files come back): gpu-check.txt (everything),
# summary.txt (the short table, also printed last), logs.tgz (one log per
# stage, the op tables, the reference data's json). It never resets or
# reconfigures the GPU.
#
# Without a GPU (here) it runs as a dry run: the GPU tests skip with their
# reason instead of failing (GPU_CHECK_DRY=1 forces that).
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/gpu-check-work.XXXXXX)
LOG=$OUT/gpu-check.txt
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1

TEST=$ROOT/bin/cuda.test
TUNE=$ROOT/bin/tune
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
declare -a SUMMARY
# Stages stop starting after BUDGET seconds, and each is cut to end by
# BUDGET+40, so the whole run stays near 7 minutes whatever hangs.
BUDGET=${GPU_CHECK_BUDGET:-380}

REQUIRE=1
if [ "${GPU_CHECK_DRY:-0}" = 1 ] || ! command -v nvidia-smi >/dev/null 2>&1; then
	REQUIRE=0
	echo "== dry run: no nvidia-smi (or GPU_CHECK_DRY=1); GPU tests will skip"
fi

stage() { # stage NAME TIMEOUT CMD...: run, log to $WORK/NAME.log, record status
	local name=$1 to=$2
	shift 2
	if ((SECONDS > BUDGET)); then
		SUMMARY+=("$(printf '%-16s %-30s' "$name" "skipped (past ${BUDGET}s budget)")")
		return
	fi
	to=$((to < BUDGET + 40 - SECONDS ? to : BUDGET + 40 - SECONDS))
	echo
	echo "== $name (timeout ${to}s) $(date -u +%H:%M:%S)"
	local t0=$SECONDS
	timeout --kill-after=10 "$to" "$@" >"$WORK/$name.log" 2>&1
	local rc=$?
	grep -v -E '^=== (RUN|PAUSE|CONT|NAME)' "$WORK/$name.log" | tail -n 40
	local st=ok
	[ $rc -ne 0 ] && st="FAIL rc=$rc"
	[ $rc -eq 124 ] && st="TIMEOUT"
	if grep -q -- '--- SKIP' "$WORK/$name.log" && ! grep -q -- '--- PASS' "$WORK/$name.log"; then
		st="$st (GPU tests skipped)"
	fi
	SUMMARY+=("$(printf '%-16s %-30s %4ss' "$name" "$st" $((SECONDS - t0)))")
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
# One process per test: a device fault (which poisons the CUDA context) in
# one loses only that test's rows. TUNE_CUDA_SYNC=1 waits after every
# launch so a fault names its kernel.
export TUNE_CUDA_SYNC=1
export TUNE_CUDA_TRAIN_OUT=$WORK/train.txt
stage ci-side 30 "$TEST" -test.count=1 -test.v -test.run 'TestPTX|TestNoDriver|TestSearch|TestOpenLibrary|TestBlocks|TestSupports|TestDry|TestSim|^TestDevicePass(Step|Trainer|Rejects|Memory8B)?$|TestFake'
for t in Embedding MatMul RMSNorm RoPE Attention Elementwise SoftmaxNLL AdamW BF16Round; do
	TUNE_CUDA_REPORT=$WORK/ops-fp32.txt stage "ops-$t" 40 "$TEST" -test.count=1 -test.v -test.timeout=35s -test.run "^TestOps$t\$"
done
TUNE_CUDA_REPORT=$WORK/ops-fp32.txt stage attn-tc 40 "$TEST" -test.count=1 -test.v -test.timeout=35s -test.run '^TestAttentionTC$'
TUNE_CUDA_REPORT=$WORK/ops-fp32.txt stage dequant 40 "$TEST" -test.count=1 -test.v -test.timeout=35s -test.run '^(TestDequantKernels|TestQuantMatMul)$'
for t in ModelForward ModelTrainPass DevicePassGPU DevicePassQuantizedGPU DevicePassDoRAGPU DeviceWindowerGPU DeviceKLDGPU DeviceDecoderGPU LoRAGolden FineTune50; do
	TUNE_CUDA_REPORT=$WORK/ops-fp32.txt stage "$t" 60 "$TEST" -test.count=1 -test.v -test.timeout=55s -test.run "^Test$t\$"
done
for t in OpsMatMul QuantMatMul ModelForward DevicePassGPU DevicePassQuantizedGPU DevicePassDoRAGPU DeviceWindowerGPU DeviceKLDGPU DeviceDecoderGPU FineTune50; do
	TUNE_CUDA_GEMM=bf16 TUNE_CUDA_REPORT=$WORK/ops-bf16.txt stage "bf16-$t" 60 "$TEST" -test.count=1 -test.v -test.timeout=55s -test.run "^Test$t\$"
done

if $PY -c 'import torch' 2>/dev/null; then
	stage torch-ref-gen 60 $PY "$ROOT/scripts/gpu/torch_ref.py" "$WORK/torchref"
	TUNE_TORCH_REF=$WORK/torchref TUNE_CUDA_REPORT=$WORK/torch-ref.txt stage torch-ref 40 "$TEST" -test.count=1 -test.v \
		-test.run 'TestTorchRef'
else
	echo "== no python3 with torch: PyTorch oracle skipped"
	SUMMARY+=("torch-ref        skipped (no torch)")
fi
if $PY -c 'import torch, transformers, peft' 2>/dev/null; then
	stage peft-gen 90 $PY "$ROOT/scripts/gpu/peft_ref.py" "$WORK/peft"
	TUNE_PEFT_REF=$WORK/peft TUNE_CUDA_REPORT=$WORK/peft.txt stage peft 40 "$TEST" -test.count=1 -test.v -test.run 'TestPEFTGrads'
else
	echo "== no python3 with torch, transformers and peft: PEFT comparison skipped"
	SUMMARY+=("peft             skipped (no transformers/peft)")
fi

cd "$ROOT"
# End to end through the CLI: training (train.device / --device) and ppl.
DEVS="cpu cuda"
[ $REQUIRE = 1 ] || DEVS=cpu
for dev in $DEVS; do
	stage "lora-$dev" 60 "$TUNE" lora --device "$dev" --recipe recipes/tiny-test.yaml --set output.dir="$WORK/lora-$dev" \
		--set dataset.cache_dir="$WORK/lora-cache-$dev" --set train.max_steps=20 --set train.eval_every=0 --set train.save_every=0
done
{
	echo "tune lora recipes/tiny-test.yaml, 20 steps: loss per step (metrics.jsonl), cpu vs cuda"
	printf '%5s %10s %10s %10s %8s\n' step cpu cuda "rel diff" "cuda mfu"
	for s in 1 5 10 15 20; do
		c=$(grep -h "\"step\":$s,\"epoch\"" "$WORK/lora-cpu/metrics.jsonl" 2>/dev/null | sed -E 's/.*"loss":([^,]*).*/\1/')
		g=$(grep -h "\"step\":$s,\"epoch\"" "$WORK/lora-cuda/metrics.jsonl" 2>/dev/null | sed -E 's/.*"loss":([^,]*).*/\1/')
		m=$(grep -h "\"step\":$s,\"epoch\"" "$WORK/lora-cuda/metrics.jsonl" 2>/dev/null | grep -o '"mfu":[^,}]*' | cut -d: -f2)
		[ -n "$c" ] || continue
		awk -v s="$s" -v c="$c" -v g="${g:--}" -v m="${m:--}" \
			'BEGIN { if (g == "-") { printf "%5d %10.5f %10s %10s %8s\n", s, c, "-", "-", m; exit }
			         d = (g - c) / c; if (d < 0) d = -d; printf "%5d %10.5f %10.5f %10.2e %8s\n", s, c, g, d, m }'
	done
} >"$WORK/lora-cli.txt"
cat "$WORK/lora-cli.txt"
printf 'The quick brown fox jumps over the lazy dog. %.0s' $(seq 40) >"$WORK/ppl.txt"
for dev in $DEVS; do
	stage "ppl-$dev" 60 "$TUNE" eval ppl --device "$dev" --model testdata/models/qwen3-untied-bf16 --data "$WORK/ppl.txt" --ctx 64 --json
done
for dev in $DEVS; do
	echo "ppl $dev: $(tail -n 1 "$WORK/ppl-$dev.log")" | tee -a "$WORK/ppl-cli.txt"
done

cd "$ROOT/kernels/cuda"
export TUNE_CUDA_SYNC=0
TUNE_CUDA_BENCH=1 TUNE_CUDA_BENCH_OUT=$WORK/bench.txt stage bench 60 "$TEST" -test.count=1 -test.v -test.run '^TestBench$'
if [ $REQUIRE = 1 ] && $PY -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
	stage torch-bench 40 $PY "$ROOT/scripts/gpu/torch_ref.py" "$WORK/torchref-bench" --bench
fi
# QLoRA at the Qwen3-8B shape: NF4 linears on the device, 2048-token steps
# with checkpointing, bf16 GEMMs (issue #11: base ~6 GB, step < 12 GB).
TUNE_CUDA_GEMM=bf16 TUNE_CUDA_BENCH=1 TUNE_CUDA_BENCH_OUT=$WORK/bench.txt TUNE_CUDA_BENCH_BUDGET=70 \
	stage qlora-8b 100 "$TEST" -test.count=1 -test.v -test.timeout=100s -test.run '^TestQLoRA8BMemory$'
# Qwen3-8B shape, bf16 GEMMs; nvidia-smi samples the device memory meanwhile.
left=$((BUDGET + 40 - SECONDS - 15))
if command -v nvidia-smi >/dev/null 2>&1; then
	nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 >"$WORK/smi-mem.log" 2>/dev/null &
	SMI=$!
fi
# The device-resident pass first (at most 120 s), then the trainer's path
# with what is left.
dev=$((left > 130 ? 120 : (left > 20 ? left - 10 : 10)))
TUNE_CUDA_GEMM=bf16 TUNE_CUDA_BENCH=1 TUNE_CUDA_BENCH_OUT=$WORK/bench.txt TUNE_CUDA_BENCH_BUDGET=$dev \
	stage bench-8b-dev 150 "$TEST" -test.count=1 -test.v -test.timeout=150s -test.run '^TestBench8BDevice$'
left=$((BUDGET + 40 - SECONDS - 15))
TUNE_CUDA_GEMM=bf16 TUNE_CUDA_BENCH=1 TUNE_CUDA_BENCH_OUT=$WORK/bench.txt TUNE_CUDA_BENCH_BUDGET=$((left > 20 ? left - 10 : 10)) \
	stage bench-8b 200 "$TEST" -test.count=1 -test.v -test.timeout=200s -test.run '^TestBench8B$'
if [ -n "${SMI:-}" ]; then
	kill "$SMI" 2>/dev/null
	wait "$SMI" 2>/dev/null
	echo "bench: nvidia-smi memory.used max $(sort -n "$WORK/smi-mem.log" | tail -n 1) MiB during the stages above" >>"$WORK/bench.txt"
fi

cd "$ROOT"
{
	echo "================ summary ================"
	for f in "$WORK/ops-fp32.txt" "$WORK/ops-bf16.txt" "$WORK/torch-ref.txt" "$WORK/peft.txt"; do
		if [ -s "$f" ]; then
			echo "-- $(basename "$f")"
			grep -E 'FAIL$' "$f" || echo "   all $(grep -c ' ok$' "$f") checks within tolerance"
			grep -E '^(lora|peft) ' "$f" | sort -u
		fi
	done
	[ -s "$WORK/train.txt" ] && { echo "-- LoRA fine-tune, CUDA vs CPU"; cat "$WORK/train.txt"; }
	[ -s "$WORK/lora-cli.txt" ] && { echo "-- tune lora"; cat "$WORK/lora-cli.txt"; }
	[ -s "$WORK/ppl-cli.txt" ] && { echo "-- tune eval ppl"; cat "$WORK/ppl-cli.txt"; }
	if [ -s "$WORK/bench.txt" ]; then
		echo "-- throughput"
		cat "$WORK/bench.txt"
		grep -h '^torch ' "$WORK/torch-bench.log" 2>/dev/null
	fi
	echo "-- stages"
	printf '%s\n' "${SUMMARY[@]}"
	echo "full log: gpu-check.txt; per-stage logs: logs.tgz ($(date -u +%H:%M:%S), ${SECONDS}s)"
} >"$OUT/summary.txt"
rm -rf "$WORK/peft/model" "$WORK/peft/adapter" "$WORK"/lora-*/checkpoints "$WORK"/lora-*/adapter "$WORK"/lora-cache-*
tar -czf "$OUT/logs.tgz" -C "$WORK" . 2>/dev/null
rm -rf "$WORK"
echo
cat "$OUT/summary.txt"
