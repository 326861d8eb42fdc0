#!/usr/bin/env bash
# The GPU-performance issue's whole-clip runs on a 4-GPU machine (after the install calls of tools/device_pack.py),
# results under $OUT. Phase "one": single-GPU 960x960 jobs side by side (GPU 0: resident; GPU 1: resident with
# --t5_cpu; GPU 2: the low-memory options) and the offload and FP8 selfchecks on GPU 3. Phase "four": the 4-step
# distilled mode end to end on all four GPUs, FP8 and bf16 ("four-fp8": FP8 only). The tiny service over NCCL is
# tools/device/tiny_service.sh.
#   [ATTENTION=fa4] bash tools/device/clip_benchmarks.sh one|four|four-fp8
set -uo pipefail
source tools/device/common.sh
clip() {  # name, time limit, then the bench_clip command
  local name=$1 limit=$2; shift 2
  logged "$name" "$limit" "$@" --preset full-random --size 960 --attention "${ATTENTION:-cudnn}" --out "$OUT/$name.json" \
    --markdown "$OUT/rows.$name.md" --note "$name"
}
case "${1:-}" in
  one)
    (for module in engine.offload engine.quantize; do  # the CUDA paths of the low-memory and FP8 options
       CUDA_VISIBLE_DEVICES=3 logged "selfcheck_$module" 120 python3 -m $module --selfcheck
     done) &
    CUDA_VISIBLE_DEVICES=0 clip resident_960 300 python3 -m engine.bench_clip --steps 1 --warmup-steps 0 &
    CUDA_VISIBLE_DEVICES=1 clip resident_t5_cpu_960 300 python3 -m engine.bench_clip --steps 1 --warmup-steps 0 \
      --t5_cpu &
    CUDA_VISIBLE_DEVICES=2 clip lowmem_960 300 python3 -m engine.bench_clip --steps 1 --warmup-steps 0 \
      --num_persistent_param_in_dit 0 --offload_model &
    wait ;;
  four|four-fp8)
    clip four_gpus_4step_fp8 280 torchrun --standalone --nproc_per_node=4 -m engine.bench_clip --steps 4 --passes 2 \
      --warmup-steps 1 --compile --fp8
    if [ "$1" = four ]; then
      clip four_gpus_4step_bf16 280 torchrun --standalone --nproc_per_node=4 -m engine.bench_clip --steps 4 \
        --passes 2 --warmup-steps 1 --compile
    fi ;;
  *) echo "usage: $0 one|four|four-fp8" >&2; exit 2 ;;
esac
grep -h "^| 20" "$OUT"/rows.*.md >> "$summary"
bundle summary.txt
cat "$summary"
