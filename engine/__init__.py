"""The render worker: models, pipeline stages, sampling, parallelism, the serve loop, the benchmark."""

import os

# CUDA's caching allocator grows its segments in place instead of carving fixed-size ones: a 960×960 job on one GPU
# reserved 70.7 GiB for a 62.4 GiB peak of live tensors without it (docs/benchmarks.md). Read when CUDA first
# allocates, which no engine module does on import; an operator's own setting wins.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
