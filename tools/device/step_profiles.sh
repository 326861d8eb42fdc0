#!/usr/bin/env bash
# Where a denoising step's GPU time goes on 1 and on 4 GPUs (GPU-performance issue: the 4-GPU 960×960 step misses
# its 95 % scaling target; this shows how much of it is communication), after the install calls of
# tools/device_pack.py; results under $OUT.
#   [ATTENTION=fa4] bash tools/device/step_profiles.sh
set -uo pipefail
source tools/device/common.sh
profile=(-m engine.bench --profile --sizes 960 640 --layers 8 --attention "${ATTENTION:-cudnn}" --compile)
CUDA_VISIBLE_DEVICES=0 logged profile_1gpu 300 python3 "${profile[@]}" --out "$OUT/profile_1gpu.json"
logged profile_4gpus 300 torchrun --standalone --nproc_per_node=4 "${profile[@]}" --out "$OUT/profile_4gpus.json"
profile_summary "$OUT"/profile_*.json
bundle summary.txt
cat "$summary"
