#!/usr/bin/env bash
# Device check for the render-service issue: the tiny service over NCCL on 2 GPUs: one-shot `duet render --gpus 2`,
# then the long-lived service under run_engine.sh --gpus 2 serving two queued jobs, drained. Results: $OUT/summary.txt
# and $OUT/results.tar.gz. On a CPU the same runs over gloo.
set -uo pipefail
source tools/device/common.sh
script=(--script bot/samples/script.txt)
logged render_2gpu 300 python3 -m bot render "${SAMPLE_PHOTOS[@]}" "${script[@]}" --preset tiny --gpus 2 \
  --out "$OUT/render_2gpu.mp4"
ids=()
for seed in 1 2; do ids+=("$(duet queue submit "${SAMPLE_PHOTOS[@]}" "${script[@]}" --seed "$seed")"); done
./run_engine.sh --gpus 2 --preset tiny --worker_name nccl-engine > "$OUT/engine.log" 2>&1 &
engine=$!
wait_for_jobs 240 "${ids[@]}"
duet queue workers --drain nccl-engine > /dev/null; wait $engine; echo "engine rc=$?" >> "$summary"
grep -E "ERROR|Traceback|NCCL WARN|backend" "$OUT/engine.log" | head -8 >> "$summary"
mp4_report var/media/*/result.mp4 "$OUT/render_2gpu.mp4"
bundle summary.txt
cat "$summary"
