#!/usr/bin/env bash
# FlashAttention-3 on float8 inputs (`fa3_fp8`) against the exact kernels, on one GPU, one phase per call:
#   probe   kernel rates and errors at the DiT's shapes: cuDNN, fa4 (when packed), fa3, fa3_fp8
#   profile a 960×960 forward's GPU time per kernel class (8 blocks): exact fa3, then fa3_fp8 with FP8 GEMMs
#   steps   seconds per step with exact fa3 at 640×640 and 960×960 (40 blocks), rows appended to docs/benchmarks.md
#   modes   the fast-modes benchmark at 960×960, 40 blocks, 2 steps: MODES (default "fp8attn") against exact
#           (ATTENTION, default fa3), rows appended to docs/benchmarks.md
# Needs .site/_fa3: carry the wheel of tools/fa3_build.sh and unpack it first, e.g. in the same call:
#   python3 -m zipfile -e .fa3pack/flash_attn_3-*.whl .site/_fa3
set -uo pipefail
source "$(dirname "$0")/common.sh"
case ${1:-} in
  probe)
    logged probe 500 python3 tools/device/attention_probe.py --out "$OUT/probe.json"
    ;;
  profile)
    profile=(-m engine.bench --profile --sizes 960 --layers 8 --compile)
    logged profile_fa3 200 python3 "${profile[@]}" --attention fa3 --out "$OUT/profile_fa3.json"
    logged profile_fp8 200 python3 "${profile[@]}" --attention fa3_fp8 --fp8 --out "$OUT/profile_fp8.json"
    profile_summary "$OUT"/profile_*.json
    ;;
  steps)
    logged steps 590 python3 -m engine.bench --sizes 640 960 --compile --attention fa3 --out "$OUT/steps.json" \
      --markdown docs/benchmarks.md --note "FlashAttention-3"
    cp docs/benchmarks.md "$OUT/"
    ;;
  modes)
    logged modes 590 python3 -m engine.bench_modes --size 960 --steps 2 --compile \
      --attention "${ATTENTION:-fa3}" --modes ${MODES:-fp8attn} --out "$OUT/modes.json" \
      --markdown docs/benchmarks.md --note "40 blocks, 2 steps, FlashAttention-3"
    cp docs/benchmarks.md "$OUT/"
    ;;
  *) echo "usage: $0 probe|profile|steps|modes" >&2; exit 2 ;;
esac
cat "$summary"
bundle summary.txt benchmarks.md probe.json modes.json steps.json
