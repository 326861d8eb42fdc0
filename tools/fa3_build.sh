#!/usr/bin/env bash
# Build FlashAttention-3 for the `fa3` and `fa3_fp8` attention backends: Hopper (sm_90a) forward kernels for head
# dim 128 in bf16 and float8 only (4 of its ~450 sources; 4 minutes on 2 cores), against the torch of the GPU machine
# (2.11, CUDA 13) with this machine's nvcc 13.0. FA3 is not on PyPI: the source is a flash-attention checkout whose
# csrc/cutlass may be empty (give a CUTLASS checkout then; its include/ is all the build reads).
#   bash tools/fa3_build.sh FLASH_ATTENTION_GIT_DIR [CUTLASS_GIT_DIR]
# Measured with flash-attention 0251105a and the CUTLASS it pins (7127592). The abi3 wheel lands in .fa3pack/;
# tools/README.md has the device calls.
set -euo pipefail
flash_attention=$(realpath "$1") cutlass=${2:+$(realpath "$2")}
cd "$(dirname "$0")/.."
repo=$PWD venv=${FA3_BUILD_VENV:-$PWD/var/fa3-build-venv}
source_tree=$(mktemp -d)
trap 'rm -rf "$source_tree"' EXIT
commit=$(git -C "$flash_attention" rev-parse HEAD)
git -C "$flash_attention" archive "$commit" hopper README.md | tar x -C "$source_tree"
cutlass_commit=$(git -C "$flash_attention" ls-tree "$commit" csrc/cutlass | awk '{print $3}')
mkdir -p "$source_tree/csrc/cutlass"
git -C "${cutlass:-$flash_attention/csrc/cutlass}" archive "$cutlass_commit" include | tar x -C "$source_tree/csrc/cutlass"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet torch==2.11.0 setuptools wheel ninja packaging numpy  # the device's torch: cu130
fi
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda-13.0} FLASH_ATTENTION_FORCE_BUILD=TRUE MAX_JOBS=2 NVCC_THREADS=1
export PATH=$CUDA_HOME/bin:$PATH
for feature in BACKWARD SPLIT PAGEDKV APPENDKV LOCAL SOFTCAP PACKGQA FP16 VARLEN CLUSTER SM80 HDIM64 HDIM96 \
  HDIM192 HDIM256 HDIMDIFF64 HDIMDIFF192; do export "FLASH_ATTENTION_DISABLE_$feature=TRUE"; done
(cd "$source_tree/hopper" && "$venv/bin/python" setup.py --quiet bdist_wheel --dist-dir "$repo/.fa3pack" \
  > "$repo/var/fa3-build.log" 2>&1) || { tail -30 var/fa3-build.log; exit 1; }
echo "flash-attention $commit, CUTLASS $cutlass_commit" > .fa3pack/SOURCE
ls -l .fa3pack
