#!/usr/bin/env bash
# Does pipelining the Ulysses exchange pay (GPU-performance issue: the 4-GPU 960×960 step misses 95 % scaling)?
# s/step of 8 DiT blocks at 960×960 (81 frames, 3 passes, compiled, cuDNN) for each --ulysses_chunks in CHUNKS on
# GPUS GPUs, and with `one` first the same on one GPU (the scaling baseline); with `profile`, engine.bench --profile
# per chunk setting instead (communication's share by rank). After the install calls of tools/device_pack.py.
#   GPUS=2 CHUNKS="1 2 5" bash tools/device/ulysses_chunks.sh [one] steps|profile
set -uo pipefail
source tools/device/common.sh
GPUS=${GPUS:-2} CHUNKS=${CHUNKS:-1 2 5}
bench=(-m engine.bench --sizes 960 --layers 8 --compile --attention cudnn)
if [ "${1:-}" = one ]; then
  CUDA_VISIBLE_DEVICES=0 logged steps_1gpu 280 python3 "${bench[@]}" --out "$OUT/steps_1gpu.json" \
    --markdown "$OUT/rows.md" --note "8 blocks, 1 GPU"
  shift
fi
for chunks in $CHUNKS; do
  if [ "${1:-steps}" = profile ]; then
    logged "profile_${GPUS}gpu_c$chunks" 280 torchrun --standalone --nproc_per_node="$GPUS" "${bench[@]}" --profile \
      --ulysses_chunks "$chunks" --out "$OUT/profile_${GPUS}gpu_c$chunks.json"
  else
    logged "steps_${GPUS}gpu_c$chunks" 280 torchrun --standalone --nproc_per_node="$GPUS" "${bench[@]}" \
      --ulysses_chunks "$chunks" --out "$OUT/steps_${GPUS}gpu_c$chunks.json" --markdown "$OUT/rows.md" \
      --note "8 blocks, Ulysses x$GPUS, exchange in up to $chunks pieces"
  fi
done
[ -f "$OUT/rows.md" ] && grep -h "^| 20" "$OUT/rows.md" >> "$summary"
python3 - "$OUT"/profile_*.json >> "$summary" 2>/dev/null <<'PY'
import json, sys
for path in sys.argv[1:]:
    for result in json.load(open(path)):
        print(path.rsplit("/", 1)[-1], result["size"], "rank", result.get("rank", 0), result["gpu_ms_total"], "ms",
              result["share_by_class"])
PY
bundle summary.txt
cat "$summary"
