"""The render worker: models, pipeline stages, sampling, parallelism, the serve loop, the benchmark."""
