"""Compiled blocks compute what eager blocks compute."""

from __future__ import annotations

import torch

from engine.acceleration import compile_blocks
from engine.bench import _inputs, build_model
from engine.models.dit import DiTConfig


def test_compiled_blocks_match_eager():
    config = DiTConfig.tiny()
    model = build_model(config, torch.device("cpu"), torch.float32)
    inputs = _inputs(config, 64, 5, torch.device("cpu"), torch.float32)
    latents = inputs.pop("latents")
    timestep = torch.tensor([500.0])
    with torch.inference_mode():
        eager = model(latents, timestep, **inputs)
        compiled = compile_blocks(model)(latents, timestep, **inputs)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
