#!/usr/bin/env bash
# End-to-end check of data-parallel `tune lora` on the tiny Qwen3 test recipe
# (seconds): one process, --nproc-per-node 2 (TCP), mpirun -np 2 (Open MPI),
# then a rank killed mid-run and the run resumed. Run from the repository
# root: bash dist/testdata/e2e.sh   (needs mpirun: apt-get install openmpi-bin)
set -euo pipefail
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
go build -o "$out/tune" ./cmd/tune
R=recipes/tiny-test.yaml
run() { "$@" > "$out/log" 2>&1 || { cat "$out/log"; return 1; }; }
final() { grep '"eval_loss"' "$1/metrics.jsonl" | tail -1; }

run "$out/tune" lora --recipe $R --set output.dir="$out/one" --force
run "$out/tune" lora --recipe $R --set output.dir="$out/tcp" --force --nproc-per-node 2
run mpirun --allow-run-as-root --oversubscribe -np 2 "$out/tune" lora --recipe $R --set output.dir="$out/mpi" --force
echo "one process: $(final "$out/one")"
echo "2 ranks tcp: $(final "$out/tcp")"
echo "2 ranks mpi: $(final "$out/mpi")"
# Step 0's evaluation sees identical weights: bit-identical on every path.
for d in tcp mpi; do
  [ "$(grep '"step":0,"eval' "$out/$d/metrics.jsonl")" = "$(grep '"step":0,"eval' "$out/one/metrics.jsonl")" ] || { echo "FAIL: $d step-0 eval differs"; exit 1; }
done
# Two ranks sum g0+g1 on both transports: the adapters are the same bytes.
cmp "$out/tcp/adapter/adapter_model.safetensors" "$out/mpi/adapter/adapter_model.safetensors" || { echo "FAIL: tcp and mpi adapters differ"; exit 1; }

# Kill rank 1 once a checkpoint exists; rank 0 must stop naming it, and the
# run resume (on one process) to the end.
"$out/tune" lora --recipe $R --set output.dir="$out/kill" --set train.max_steps=2000 --set train.save_every=5 --force --nproc-per-node 2 > "$out/kill.log" 2>&1 &
spawner=$!
for _ in $(seq 100); do [ -d "$out/kill/checkpoints/step-5" ] && break; sleep 0.1; done
for p in $(pgrep -P $spawner); do
  if tr '\0' '\n' < /proc/$p/environ | grep -qx RANK=1; then kill -9 "$p"; fi
done
if wait $spawner; then echo "FAIL: the run survived a dead rank"; exit 1; fi
grep -q "rank 1 is gone" "$out/kill.log" || { cat "$out/kill.log"; echo "FAIL: rank 0 did not name rank 1"; exit 1; }
grep -q "rank 1: signal: killed" "$out/kill.log" || { cat "$out/kill.log"; echo "FAIL: the spawner did not name rank 1"; exit 1; }
tail -2 "$out/kill.log"
run "$out/tune" lora --recipe $R --set output.dir="$out/kill" --set train.max_steps=2000 --set train.save_every=5 --resume --set train.max_steps=40
grep -q "resuming from" "$out/log" && tail -1 "$out/log"
echo PASS
