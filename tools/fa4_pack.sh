#!/usr/bin/env bash
# Pack the optional `fa4` attention backend (flash-attn-4 and its CuTe DSL compiler) for the GPU machine, which has
# torch built for CUDA 13 and no network: cp312 manylinux wheels, unpacked, in .fa4pack/fa4.partNN pieces of 45 MB
# (the CUDA 13 compiler library alone is a 92 MB wheel, over one carry). Run here; tools/README.md has the calls.
#   bash tools/fa4_pack.sh
set -euo pipefail
cd "$(dirname "$0")/.."
wheels=$(mktemp -d) site=$(mktemp -d)
trap 'rm -rf "$wheels" "$site"' EXIT
# --no-deps and the list written out: pip's resolver would also fetch torch and the CUDA 12 libraries.
python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --dest "$wheels" \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
  flash-attn-4==4.0.0b36 quack-kernels==0.6.5 nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1 \
  nvidia-cutlass-dsl-libs-core==4.8.1 nvidia-cutlass-dsl-libs-cu13==4.8.1 "cuda-bindings>=13,<14" cuda-pathfinder \
  apache-tvm-ffi==0.1.15.post2 torch-c-dlpack-ext==0.1.5 protobuf
for wheel in "$wheels"/*.whl; do python -m zipfile -e "$wheel" "$site"; done
mkdir -p .fa4pack && rm -f .fa4pack/fa4.part*
tar czf - -C "$site" . | split -b 45M -d - .fa4pack/fa4.part
ls -l .fa4pack
