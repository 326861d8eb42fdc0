#!/usr/bin/env bash
# Device check for the render-service issue: the tiny service over NCCL on 2 GPUs: one-shot `duet render --gpus 2`,
# then the long-lived service under run_engine.sh --gpus 2 serving two queued jobs, drained.
set -uo pipefail
export PYTHONPATH=$PWD/.site:$PWD PYTHON=python3
export DUET_CONFIG=$PWD/bot_config.toml
mkdir -p var "$OUT"
duet() { python3 -m bot "$@"; }
nvidia-smi -L
S=bot/samples
echo "== 1. duet render --gpus 2 --preset tiny (torchrun, NCCL)"
SECONDS=0
duet render --photo-a $S/grace_hopper.jpg --photo-b $S/astronaut.png --script $S/script.txt --preset tiny --gpus 2 \
  --out "$OUT/render_2gpu.mp4" > "$OUT/render.log" 2>&1; echo "rc=$? wall=${SECONDS}s"
grep -E "Error|error" "$OUT/render.log" | head -5
echo "== 2. run_engine.sh --gpus 2 serving 2 queued jobs"
ids=()
for seed in 1 2; do ids+=("$(duet queue submit --photo-a $S/grace_hopper.jpg --photo-b $S/astronaut.png --script $S/script.txt --seed $seed)"); done
SECONDS=0
./run_engine.sh --gpus 2 --preset tiny --worker_name nccl-engine > "$OUT/engine.log" 2>&1 &
engine=$!
done_jobs=0
while [ $SECONDS -lt 240 ]; do
  done_jobs=0
  for id in "${ids[@]}"; do duet queue show "$id" --json 2>/dev/null | grep -q '"state": "succeeded"' && done_jobs=$((done_jobs+1)); done
  [ $done_jobs = ${#ids[@]} ] && break; sleep 2
done
echo "served ${done_jobs}/${#ids[@]} jobs in ${SECONDS}s"
duet queue workers --drain nccl-engine >/dev/null; wait $engine; echo "engine rc=$?"
grep -E "ERROR|Traceback|NCCL WARN|backend" "$OUT/engine.log" | head -8
for id in "${ids[@]}"; do duet queue show "$id" --json > "$OUT/job_${id:0:8}.json"; done
python3 - "$OUT" <<'PY'
import glob, sys, av
for path in sorted(glob.glob("var/media/*/result.mp4")) + [f"{sys.argv[1]}/render_2gpu.mp4"]:
    with av.open(path) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        print(path, v.codec_context.name, v.average_rate, v.width, v.height, v.frames, a.codec_context.name, c.duration / 1e6)
PY
