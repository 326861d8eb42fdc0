"""FP8 linears of the DiT on the CPU: the quantization numerics, the module swap and how it composes.

The CPU runs the dequantized-fp32 arithmetic that `torch._scaled_mm` performs on an H100, so errors measured here are
the FP8 errors; the kernel itself is checked on a GPU by `python -m engine.quantize --selfcheck`.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.bench import _inputs, build_model
from engine.models.dit import DiTConfig, MultiTalkDiT
from engine.quantize import FP8_DTYPE, FP8_MAX, FP8Linear, quantize_dit_fp8, quantize_rowwise, supports_fp8_matmul

BLOCK_LINEARS = (
    "self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
    "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o", "cross_attn.k_img", "cross_attn.v_img",
    "audio_cross_attn.q_linear", "audio_cross_attn.kv_linear", "audio_cross_attn.proj",
    "ffn.0", "ffn.2",
)


def _random_linear(width_in: int, width_out: int, seed: int = 0) -> nn.Linear:
    g = torch.Generator().manual_seed(seed)
    linear = nn.Linear(width_in, width_out)
    with torch.no_grad():
        linear.weight.normal_(0.0, 0.02, generator=g)  # engine.bench's random weights
        linear.bias.normal_(0.0, 0.02, generator=g)
    return linear


def _tiny_dit_and_inputs() -> tuple[MultiTalkDiT, dict]:
    config = DiTConfig.tiny()
    model = build_model(config, torch.device("cpu"), torch.float32)
    inputs = _inputs(config, 64, 5, torch.device("cpu"), torch.float32)
    return model, inputs


def _forward(model: nn.Module, inputs: dict) -> torch.Tensor:
    inputs = dict(inputs)
    latents = inputs.pop("latents")
    with torch.inference_mode():
        return model(latents, torch.tensor([500.0]), **inputs)


def test_rowwise_quantization_maps_each_rows_amax_to_the_fp8_maximum():
    x = torch.randn(6, 32) * torch.logspace(-3, 3, 6)[:, None]  # rows six orders of magnitude apart
    x[2] = 0  # an all-zero row (padding) must not divide by zero
    q, scale = quantize_rowwise(x)
    assert q.dtype == FP8_DTYPE and scale.shape == (6, 1)
    nonzero = [0, 1, 3, 4, 5]
    assert torch.equal(q.float().abs().amax(-1)[nonzero], torch.full((5,), FP8_MAX))
    assert torch.equal(q[2].float(), torch.zeros(32)) and torch.isfinite(scale).all()
    dequantized = q.float() * scale
    per_row = (dequantized - x).norm(dim=-1) / x.norm(dim=-1).clamp(min=1e-30)
    assert per_row[nonzero].max() < 0.05  # per-row scaling keeps small rows as accurate as large ones


@pytest.mark.parametrize(("width_in", "width_out"), [(64, 128), (512, 256), (96, 1024)])
def test_fp8_linear_error_is_that_of_e4m3(width_in, width_out, relative_error):
    linear = _random_linear(width_in, width_out)
    x = torch.randn(4, 50, width_in, generator=torch.Generator().manual_seed(1))
    fp8 = FP8Linear.from_linear(linear)
    with torch.no_grad():
        error = relative_error(fp8(x), linear(x))
    # Measured 0.035-0.038 (3 mantissa bits on both operands); zero would mean nothing was quantized.
    assert 0.02 < error < 0.05
    assert fp8.weight.dtype == FP8_DTYPE and fp8.weight_scale.shape == (width_out,)
    assert fp8.bias.dtype == torch.float32 and torch.equal(fp8.bias, linear.bias)


def test_fp8_linear_keeps_the_activation_dtype_and_shape():
    fp8 = FP8Linear.from_linear(_random_linear(64, 32).to(torch.bfloat16))
    out = fp8(torch.randn(2, 3, 7, 64, dtype=torch.bfloat16))
    assert out.shape == (2, 3, 7, 32) and out.dtype == torch.bfloat16


def test_widths_the_fp8_kernel_cannot_take_are_refused():
    with pytest.raises(ValueError, match="divisible by 16"):
        FP8Linear.from_linear(nn.Linear(64, 40))


def test_the_cpu_never_claims_the_fp8_kernel():
    assert not supports_fp8_matmul(torch.device("cpu"))
    assert not FP8Linear.from_linear(_random_linear(32, 32)).use_scaled_mm


def test_exactly_the_block_linears_are_swapped():
    model, _ = _tiny_dit_and_inputs()
    outside = {name: module.weight.dtype for name, module in model.named_modules()
               if isinstance(module, nn.Linear) and not name.startswith("blocks.")}
    swapped = quantize_dit_fp8(model)
    expected = [f"blocks.{i}.{name}" for i in range(model.config.num_layers) for name in BLOCK_LINEARS]
    assert sorted(swapped) == sorted(expected) and len(swapped) == 15 * model.config.num_layers
    fp8_modules = sorted(name for name, module in model.named_modules() if isinstance(module, FP8Linear))
    assert fp8_modules == sorted(expected)
    # Embeddings, time path, image/audio projections and head keep their nn.Linear in the model dtype.
    kept = {name: module.weight.dtype for name, module in model.named_modules() if type(module) is nn.Linear}
    assert kept == outside and "head.head" in kept and "time_projection.1" in kept
    assert not any(type(module) is nn.Linear for module in model.blocks.modules())


def test_tiny_dit_with_fp8_stays_close_to_full_precision(relative_error):
    model, inputs = _tiny_dit_and_inputs()
    exact = _forward(model, inputs)
    quantize_dit_fp8(model)
    error = relative_error(_forward(model, inputs), exact)
    assert 1e-4 < error < 0.02  # measured 0.0026: the residual stream carries most of the signal


def test_quantize_after_loading_a_state_dict(relative_error):
    """Checkpoints load into the unquantized model as before; quantizing afterwards gives the same model."""
    source, inputs = _tiny_dit_and_inputs()
    loaded = MultiTalkDiT(source.config).eval()
    loaded.load_state_dict(source.state_dict(), strict=True)
    quantize_dit_fp8(source)
    quantize_dit_fp8(loaded)
    assert relative_error(_forward(loaded, inputs), _forward(source, inputs)) < 1e-6
    # A quantized model no longer takes a reference state dict: it must be loaded before, never after.
    with pytest.raises(RuntimeError, match="weight_scale"):
        loaded.load_state_dict(MultiTalkDiT(source.config).state_dict(), strict=True)


def test_fp8_blocks_trace_as_one_graph():
    """torch.compile (engine.acceleration.compile_blocks) sees no graph break in an FP8 block.

    Inductor itself is exercised on the GPU (engine.bench_modes --compile); here dynamo's capture with a cheap
    backend, which is where a module swap would break compilation (a break would split the fused quantization).
    """
    model, inputs = _tiny_dit_and_inputs()
    quantize_dit_fp8(model)
    latents = inputs.pop("latents")
    with torch.inference_mode():
        tokens, cond = model.embed(latents, torch.tensor([500.0]), **inputs)
        eager = model.blocks[0](tokens, cond)
        compiled = torch.compile(model.blocks[0], backend="aot_eager", fullgraph=True)(tokens, cond)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
