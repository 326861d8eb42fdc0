#!/usr/bin/env bash
# Start the Duet render service: one torchrun group of `engine.serve` (one process per GPU), kept alive by
# `engine.supervisor` (restarts after a crash, requeues the current job on SIGTERM, pauses claiming when jobs
# keep crashing). Models load once; the service then serves the queue until drained or stopped.
#
#   ./run_engine.sh [--gpus N] [--config FILE] [engine.serve options…]
#
#   --gpus N      processes (default: every visible GPU; on a machine without CUDA, 1 process on the CPU, gloo)
#   --config FILE bot_config.toml to use (default: $DUET_CONFIG, else ./bot_config.toml)
#   --breaker_crashes N --breaker_jobs M --breaker_window_s S
#                 pause claiming after N crashes touching M different jobs within S seconds (default 3, 2, 600)
#   everything else goes to `python -m engine.serve` (see `python -m engine.serve --help`), e.g.
#     --preset tiny             random weights, runs on the CPU, renders noise (for trying the path end to end)
#     --once                    serve one job, then exit
#     --ulysses_size N          sequence parallelism over N GPUs (default: --gpus when N > 1)
#     --preset full-random      production shapes with random weights, no files (GPU smoke tests, benchmarks)
#     --job_id ID               serve this one job, then exit (what `duet render` starts)
#     --attention cudnn --compile   the fast path on H100/H200 (cuDNN attention, compiled blocks): ~1.25x faster
#     --attention fa4 --compile     faster still (FlashAttention-4 kernels; pip install 'duet[fa4]'): 36.0 -> 31.9 s/step
#                               on one H100, 8.5 s/step on four H200s (the best kernel for a rank's 10 heads)
#     --attention fa3 --compile     FlashAttention-3 (Hopper; build it with tools/fa3_build.sh): 31.8 s/step on one H100
#     --attention fa3_fp8 --fp8 --compile   float8 attention and GEMMs: 25.4 s/step on one H100, not exact (its
#                               deviation from the exact result is in docs/benchmarks.md)
#     --fp8                     FP8 matrix multiplies in the DiT (Ada/Hopper; with --compile; see docs/benchmarks.md)
#     --dit_fsdp --t5_fsdp      shard the DiT's blocks / T5's layers over the processes (FSDP)
#   low memory (one GPU of 24 GB; see engine/offload.py):
#     --num_persistent_param_in_dit N   keep N DiT parameters on the GPU, stream the other blocks from pinned memory
#     --offload_model true      T5, CLIP and the DiT leave the GPU while another stage runs
#     --t5_cpu                  run T5 on the CPU (once per distinct scene: prompts are cached)
#     --vae_tiling              decode in overlapping tiles (less memory, small seams)
#     --sp_backend xfuser --ring_size R   xfuser 0.4.5's Ulysses x ring attention instead of the built-in Ulysses
#
# Stop: SIGTERM (systemd stop, Ctrl-C) requeues the current job without charging an attempt and exits within
# 40 s. Finish the current job, then stop: `duet queue workers --drain NAME` (or `all`). Set systemd's
# TimeoutStopSec ≥ 45 s and KillMode=mixed, so that only this script receives the signal (it stops the ranks).
#
# NCCL settings (export them before starting; the defaults are right on a healthy NVLink host):
#   NCCL_P2P_DISABLE=1 NCCL_IB_DISABLE=1   the known fix for multi-GPU runs that hang at start on some PCIe hosts
#                                          and in containers without peer access (slower; use only if it hangs)
#   NCCL_NVLS_ENABLE=0                     NVLink multicast (SHARP) off: it has hung on some drivers
#   NCCL_DEBUG=INFO                        print the topology and transport NCCL chose (first thing to look at)
#   NCCL_SOCKET_IFNAME=eth0                which network interface to use when several exist
#   TORCH_NCCL_ASYNC_ERROR_HANDLING=3      (the default) a collective that times out tears the process down, so
#                                          the supervisor restarts the group instead of it hanging forever; the
#                                          timeout is --collective_timeout_s (idle ranks wait on gloo, not NCCL)
#   TORCH_NCCL_DUMP_ON_TIMEOUT=1 TORCH_NCCL_TRACE_BUFFER_SIZE=2000   flight-recorder dump when that happens
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-python}"
GPUS=""
CONFIG="${DUET_CONFIG:-}"
SERVE_ARGS=()
SUPERVISOR_ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --gpus) GPUS="$2"; shift 2 ;;
    --gpus=*) GPUS="${1#*=}"; shift ;;
    --config) CONFIG="$2"; shift 2 ;;
    --config=*) CONFIG="${1#*=}"; shift ;;
    --breaker_crashes|--breaker_jobs|--breaker_window_s) SUPERVISOR_ARGS+=("$1" "$2"); shift 2 ;;
    *) SERVE_ARGS+=("$1"); shift ;;
  esac
done
CONFIG_ARGS=()
if [[ -n "$CONFIG" ]]; then CONFIG_ARGS=(--config "$CONFIG"); fi

if [[ -z "$GPUS" ]]; then
  GPUS="$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')"
  if [[ "$GPUS" == "0" ]]; then
    echo "run_engine.sh: no CUDA device visible: one process on the CPU (gloo)" >&2
    GPUS=1
  fi
fi
if [[ "$GPUS" -gt 1 ]] && [[ ! " ${SERVE_ARGS[*]-} " =~ " --ulysses_size" ]]; then
  SERVE_ARGS+=(--ulysses_size "$GPUS")
fi

# Refuse before anything loads when weights are missing (names the files), and say what will be loaded.
"$PYTHON" -m engine.serve "${CONFIG_ARGS[@]}" "${SERVE_ARGS[@]}" --check

echo "run_engine.sh: starting $GPUS process(es) at $(date -u +%FT%TZ)" >&2
exec "$PYTHON" -m engine.supervisor "${CONFIG_ARGS[@]}" "${SUPERVISOR_ARGS[@]}" -- \
  "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$GPUS" --max-restarts=0 \
  -m engine.serve "${CONFIG_ARGS[@]}" "${SERVE_ARGS[@]}"
