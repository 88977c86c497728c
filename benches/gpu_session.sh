#!/usr/bin/env bash
# Everything that waits for a GPU, in one call of the device tool (carry [".gpu"], built as in
# docs/gpu-notes.md): the setup of gpu_run.sh, then gpu_check (the default kernels' checks and timings, then the
# opt-in section: the training ops' kernels, the transform's variants and their copy ratios), then the Small model's
# training with the training ops' CUDA kernels on (CANDLE_STRUCTURED_CUDA_OPS=1) in f32 / tf32 / bf16 with the
# per-phase split. Each step has its own time limit and log under $OUT, so a step that fails or hangs leaves
# the others' results. More steps, for a second call (one call may run 10 minutes):
#   train:    the same training on candle's own ops (the default until the kernels are measured);
#   torch:    PyTorch's twin of the model (benches/torch_train.py);
#   sanitize: compute-sanitizer (memcheck, racecheck, synccheck) over the opt-in variants' and the ops' checks;
#   profile:  nsys over 2 steps of bf16 training with the op kernels, its kernel and API time summaries.
#   bash benches/gpu_session.sh                                  # check train_ops, about 6 minutes on an H100
#   STEPS="train torch profile" bash benches/gpu_session.sh     # the second call
#   STEPS="sanitize" bash benches/gpu_session.sh
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
STEPS=${STEPS:-"check train_ops"}
source "$(dirname "$0")/gpu_run.sh" > "$OUT/setup.log" 2>&1
run() {  # run <log name> <seconds> <command...>
  local log=$1 secs=$2; shift 2
  local t0=$SECONDS
  timeout "$secs" "$@" > "$OUT/$log.log" 2>&1
  local rc=$?
  echo "$log: rc $rc, $((SECONDS - t0)) s" | tee -a "$OUT/session.log"
}
for step in $STEPS; do
  case $step in
    check)
      run gpu_check 240 .gpu/gpu_check
      tail -40 "$OUT/gpu_check.log"
      ;;
    train|train_ops)
      # train_ops: the same runs with the training ops on their CUDA kernels
      ops=0; tag=train; [ "$step" = train_ops ] && ops=1 && tag=train_ops
      common=(--preset small --device cuda --data data/fr-debian --steps 3 --eval-every 0 --checkpoint-every 0
              --eval-windows 4 --test-windows 4 --no-progress)
      for p in f32 tf32 bf16; do
        CANDLE_STRUCTURED_CUDA_OPS=$ops run "${tag}_$p" 100 .gpu/train_small "${common[@]}" --micro-batch 4 \
          --precision "$p" --sync-phases --run-dir "/tmp/run-$tag-$p"
        grep -E "tokens/s|utilisation|per step" "$OUT/${tag}_$p.log" | tail -6
      done
      CANDLE_STRUCTURED_CUDA_OPS=$ops run "${tag}_bf16_mb8" 100 .gpu/train_small "${common[@]}" --micro-batch 8 \
        --precision bf16 --run-dir "/tmp/run-$tag-bf16-8"
      grep -E "tokens/s|utilisation" "$OUT/${tag}_bf16_mb8.log" | tail -3
      ;;
    torch)
      run torch_train 150 python3 benches/torch_train.py --steps 2
      tail -8 "$OUT/torch_train.log"
      ;;
    sanitize)
      SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
      if [ -z "$SAN" ]; then echo "sanitize: no compute-sanitizer" | tee -a "$OUT/session.log"; continue; fi
      for tool in memcheck racecheck synccheck; do
        run "sanitize_$tool" 150 "$SAN" --tool "$tool" --error-exitcode 9 .gpu/gpu_check --only-variants --quick
        tail -4 "$OUT/sanitize_$tool.log"
        run "sanitize_ops_$tool" 150 "$SAN" --tool "$tool" --error-exitcode 9 .gpu/gpu_check --only-ops
        tail -4 "$OUT/sanitize_ops_$tool.log"
      done
      ;;
    profile)
      NSYS=$(command -v nsys || ls /usr/local/cuda*/bin/nsys /opt/nvidia/nsight-systems*/bin/nsys 2>/dev/null | head -1)
      if [ -z "$NSYS" ]; then echo "profile: no nsys" | tee -a "$OUT/session.log"; continue; fi
      CANDLE_STRUCTURED_CUDA_OPS=1 run nsys_bf16 240 "$NSYS" profile --force-overwrite true -o /tmp/train_bf16 --stats=true -t cuda \
        .gpu/train_small --preset small --device cuda --data data/fr-debian --steps 2 --eval-every 0 \
        --checkpoint-every 0 --eval-windows 2 --test-windows 2 --no-progress --micro-batch 4 --precision bf16 \
        --run-dir /tmp/run-prof
      grep -A30 "cuda_gpu_kern_sum" "$OUT/nsys_bf16.log" | head -34
      grep -A12 "cuda_api_sum" "$OUT/nsys_bf16.log" | head -14
      ;;
  esac
done
cat "$OUT/session.log"
