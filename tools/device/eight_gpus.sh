#!/usr/bin/env bash
# The 8-GPU issue on an 8-GPU machine (after the install calls of tools/device_pack.py), one phase per call:
#   steps8   s/step at 960x960 and 640x640 (81 frames, 3 passes, compiled, cuDNN) on 8 GPUs
#   steps1   the same on 1 GPU of the machine (the scaling baseline)
#   clip     peak memory per GPU and stage times with --ulysses_size 8 --t5_fsdp --dit_fsdp (960x960), and the
#            4-step mode at 640x640 end to end (its wall time against the clip's 3.24 s)
#   service  one 81-frame 960x960 job from the queue through run_engine.sh --gpus 8 to the MP4, wall time
# Results: $OUT/summary.txt and $OUT/results.tar.gz (every JSON, log and row). GPUS and PRESET (default 8 and
# full-random) let a phase run on fewer GPUs (GPUS=4: the GPU-performance issue's 4-GPU rows) or be tried first
# where it is cheap: GPUS=2 PRESET=tiny runs the service phase on a CPU. ATTENTION (default cudnn; fa4 after
# tools/fa4_pack.sh's steps) and SIZES (default "640 960") shape the steps phases.
#   bash tools/device/eight_gpus.sh steps8|steps1|clip|service
set -uo pipefail
source tools/device/common.sh
GPUS=${GPUS:-8} PRESET=${PRESET:-full-random} ATTENTION=${ATTENTION:-cudnn} SIZES=${SIZES:-640 960}
case "${1:-}" in
  steps8)
    logged "steps_${GPUS}gpu" 560 torchrun --standalone --nproc_per_node="$GPUS" -m engine.bench --sizes $SIZES \
      --compile --attention "$ATTENTION" --out "$OUT/steps_${GPUS}gpu.json" --markdown "$OUT/rows.md" \
      --note "Ulysses x$GPUS, $ATTENTION + compiled blocks"
    grep -h "^| 20" "$OUT/rows.md" >> "$summary" ;;
  steps1)
    logged steps_1gpu 560 python3 -m engine.bench --sizes $SIZES --compile --attention "$ATTENTION" \
      --out "$OUT/steps_1gpu.json" --markdown "$OUT/rows.md" --note "1 GPU baseline on the $GPUS-GPU host, $ATTENTION"
    grep -h "^| 20" "$OUT/rows.md" >> "$summary" ;;
  clip)
    logged clip_fsdp_960 280 torchrun --standalone --nproc_per_node="$GPUS" -m engine.bench_clip --size 960 \
      --steps 2 --warmup-steps 1 --attention cudnn --t5_fsdp --dit_fsdp --out "$OUT/clip_fsdp_960.json" \
      --markdown "$OUT/rows.md" --note "Ulysses x$GPUS + T5/DiT FSDP"
    logged clip_4step_640 280 torchrun --standalone --nproc_per_node="$GPUS" -m engine.bench_clip --size 640 \
      --steps 4 --passes 2 --warmup-steps 1 --attention cudnn --compile --fp8 --out "$OUT/clip_4step_640.json" \
      --markdown "$OUT/rows.md" --note "4-step mode, $GPUS GPUs, FP8"
    grep -h "^| 20" "$OUT/rows.md" >> "$summary"
    python3 -c "import json,sys; [print(p, json.load(open(p))['peak_memory']) for p in sys.argv[1:]]" \
      "$OUT"/clip_*.json >> "$summary" 2>&1 ;;
  service)
    printf 'A: Hello there.\nB: Hi!\n' > "$OUT/script.txt"  # under 3.2 s of speech: one 81-frame chunk
    id=$(duet queue submit "${SAMPLE_PHOTOS[@]}" --script "$OUT/script.txt" --quality 720p --seed 1)
    fast=$([ "$PRESET" = tiny ] || echo "--attention cudnn --compile")
    ./run_engine.sh --gpus "$GPUS" --preset "$PRESET" $fast --worker_name eight > "$OUT/engine.log" 2>&1 &
    engine=$!
    wait_for_jobs 540 "$id"
    duet queue workers --drain eight > /dev/null; wait $engine
    mp4_report var/media/*/result.mp4
    grep -E "models loaded|rendered:" "$OUT/engine.log" >> "$summary" ;;
  *) echo "usage: $0 steps8|steps1|clip|service" >&2; exit 2 ;;
esac
bundle summary.txt
cat "$summary"
