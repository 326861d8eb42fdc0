"""FP8 (e4m3) matrix multiplies for the DiT's transformer blocks: half the weight memory, faster GEMMs on H100.

`quantize_dit_fp8(dit)` swaps every `nn.Linear` inside `dit.blocks` (self-attention q/k/v/o, image/text
cross-attention q/k/v/o/k_img/v_img, audio cross-attention q_linear/kv_linear/proj, the two FFN matrices: 15 per
block, 18.55 B of the 18.88 B parameters) for an `FP8Linear`. Everything outside the blocks stays in the model dtype:
patch, text, time and image embeddings, the time projection, the audio projection and the head are small, run once
per forward, and the time path and head are the reference's fp32 islands.

Numerics of `FP8Linear`: the weight is quantized once, per output channel, to float8
e4m3 with an fp32 scale (amax / 448); each call quantizes the activations per token (row) the same way and
multiplies with `torch._scaled_mm` (fp32 accumulation, both scale vectors applied in its epilogue, bias added, out in
the activation dtype). That kernel needs compute capability >= 8.9 (Ada, Hopper), in/out widths divisible by 16 and,
with row-wise scales, bf16 activations (the DiT's dtype).
Elsewhere (CPU, older GPUs) the same quantize -> dequantize arithmetic runs in plain fp32 torch: it exists so CPU
tests check the numerics and the module swap, and is slower than the bf16 layer it replaces, never a speed path.
Measured on an H100 / H200 (docs/benchmarks.md): 0.037 relative error per layer against fp32 (bf16: 0.0017); the
FFN GEMM at 971 / 1245 TFLOP/s (bf16 800 / 770), but `FP8Linear` eager only 664 / 786, slower than bf16 on the H100:
the activation quantization's separate elementwise kernels eat the gain, and `compile_blocks` fuses them away
(995 / 1216). Use FP8 with compiled blocks.

Order at load: load the state dict and merge LoRAs first, then quantize, then `compile_blocks` and/or wrap in
`SequenceParallelDiT` (which only replaces attention, so it is unaffected). The swap is irreversible and frees the
original weights layer by layer. Do not cast the model afterwards (`.to(dtype)` would turn float8 weights back into
bf16 ones) and do not shard it with FSDP: 19 GB of FP8 blocks fit one GPU, which is the point.

FP8 attention is not here but an attention backend, `fa3_fp8` (engine/models/attention.py): PyTorch exposes no FP8
scaled-dot-product-attention kernel, and attention is 67 % of a forward's FLOPs at 960×960, so the GEMMs alone bring
little there (measured 1.07× per step at 960×960, 1.13× at 640×640).

`python -m engine.quantize --selfcheck` checks the CUDA path on a GPU (errors and GEMM speed; see `main`).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.attention import FP8_DTYPE, FP8_MAX
from engine.models.dit import DiTConfig, MultiTalkDiT

_MIN_AMAX = 1e-12  # an all-zero row keeps a finite scale (its values quantize to 0 either way)


def supports_fp8_matmul(device: torch.device) -> bool:
    """Whether `torch._scaled_mm` runs FP8 on `device` (CUDA compute capability 8.9 or newer)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def quantize_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[M, K] -> (float8 e4m3 [M, K], fp32 scale [M, 1]) with x ≈ q * scale; each row's amax maps to 448."""
    x32 = x.float()
    scale = x32.abs().amax(dim=-1, keepdim=True).clamp(min=_MIN_AMAX) / FP8_MAX
    return (x32 / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale


class FP8Linear(nn.Module):
    """`y = x Wᵀ + b` with W stored as float8 e4m3 per output channel and x quantized per token at each call.

    `weight` [out, in] float8, `weight_scale` [out] fp32 and `bias` [out] (the original dtype) are frozen
    parameters, so `model.parameters()` still sees every weight (device lookups, parameter counts).
    """

    def __init__(self, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.weight_scale = nn.Parameter(weight_scale, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        # A plain attribute, not a per-call device query: torch.compile treats it as a constant of the graph.
        self.use_scaled_mm = supports_fp8_matmul(weight.device)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> FP8Linear:
        if linear.in_features % 16 or linear.out_features % 16:
            raise ValueError(
                f"FP8 GEMMs need widths divisible by 16, got {linear.in_features} -> {linear.out_features}"
            )
        with torch.no_grad():
            weight, scale = quantize_rowwise(linear.weight)
            bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls(weight, scale.squeeze(1), bias)

    def _apply(self, fn, recurse=True):  # noqa: ANN001 - nn.Module's signature
        # A move to another device re-decides the kernel (a model quantized on the CPU, then moved to an H100).
        module = super()._apply(fn, recurse)
        self.use_scaled_mm = supports_fp8_matmul(self.weight.device)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., in] -> [..., out] in x's dtype."""
        rows = x.reshape(-1, self.in_features)
        x_fp8, x_scale = quantize_rowwise(rows)
        if self.use_scaled_mm and x.dtype == torch.bfloat16:  # row-wise scaled FP8 GEMMs only write bf16
            out = torch._scaled_mm(
                x_fp8,
                self.weight.t(),  # column-major [in, out], the layout the FP8 kernel takes for its second operand
                scale_a=x_scale,
                scale_b=self.weight_scale[None],  # [1, out]
                bias=self.bias,
                out_dtype=x.dtype,
            )
        else:
            weight = self.weight.float() * self.weight_scale[:, None]
            bias = None if self.bias is None else self.bias.float()
            out = F.linear(x_fp8.float() * x_scale, weight, bias).to(x.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        kernel = "_scaled_mm" if self.use_scaled_mm else "dequantized fp32 (tests only)"
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel={kernel}"


def quantize_dit_fp8(dit: MultiTalkDiT) -> list[str]:
    """Replace every `nn.Linear` in `dit.blocks` by an `FP8Linear`, in place; returns the swapped module names.

    Call after the weights (and LoRAs) are loaded: the float8 copies replace the originals, which are freed one
    layer at a time, so peak memory grows by one layer's fp32 scratch, not by a second model.
    """
    names = [name for name, module in dit.blocks.named_modules(prefix="blocks") if isinstance(module, nn.Linear)]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = dit.get_submodule(parent_name)
        # Replacing the attribute drops the last reference to the bf16 weights before the next layer is quantized.
        setattr(parent, child, FP8Linear.from_linear(getattr(parent, child)))
    return names


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """‖actual − expected‖ / ‖expected‖ over the whole tensor, in float64."""
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).norm() / expected.norm()).item()


# ---------------------------------------------------------------------------------------------------------------
# Self-check on a GPU: `python -m engine.quantize --selfcheck`

# Bounds on the relative error vs fp32. e4m3 keeps 3 mantissa bits, ~2.5 % RMS rounding per operand, so ~3.5 % per
# GEMM is the expected cost (the CPU path measures 0.037 on these shapes with N(0, 1) inputs); well above that means
# a wrong scale or layout.
LINEAR_ERROR_BOUND = 0.06
BLOCK_ERROR_BOUND = 0.06
KERNEL_VS_EMULATION_BOUND = 0.01  # _scaled_mm vs the dequantized fp32 path: bf16 output rounding only

SELFCHECK_LAYERS = {  # name: (in, out) at full size
    "self_attn.q (5120->5120)": (5120, 5120),
    "ffn.0 (5120->13824)": (5120, 13824),
    "ffn.2 (13824->5120)": (13824, 5120),
    "audio kv_linear (768->10240)": (768, 10240),
}


def _time_ms(fn, repeats: int = 10) -> float:  # noqa: ANN001
    fn()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats * 1000


def _check_linears(device: torch.device, tokens: int) -> list[dict]:
    g = torch.Generator(device=device).manual_seed(0)
    rows = []
    for name, (width_in, width_out) in SELFCHECK_LAYERS.items():
        linear = nn.Linear(width_in, width_out, device=device, dtype=torch.bfloat16)
        with torch.no_grad():
            linear.weight.normal_(0.0, 0.02, generator=g)
            linear.bias.normal_(0.0, 0.02, generator=g)
        x = torch.randn(tokens, width_in, device=device, generator=g).to(torch.bfloat16)
        with torch.no_grad():
            reference = F.linear(x.float(), linear.weight.float(), linear.bias.float())
            bf16 = linear(x)
            fp8 = FP8Linear.from_linear(linear)
            kernel = fp8(x)
            fp8.use_scaled_mm = False
            emulated = fp8(x)
        rows.append({
            "layer": name,
            "tokens": tokens,
            "bf16_vs_fp32": relative_error(bf16, reference),
            "fp8_vs_fp32": relative_error(kernel, reference),
            "fp8_vs_bf16": relative_error(kernel, bf16),
            "kernel_vs_emulation": relative_error(kernel, emulated),
        })
    return rows


def _ffn_gemm_speed(device: torch.device, tokens: int) -> dict:
    """TFLOP/s of the FFN-in GEMM [tokens×5120]·[5120×13824]: bf16, the bare FP8 kernel, FP8Linear eager/compiled."""
    linear = nn.Linear(5120, 13824, device=device, dtype=torch.bfloat16)
    x = torch.randn(tokens, 5120, device=device, dtype=torch.bfloat16)
    fp8 = FP8Linear.from_linear(linear)
    x_fp8, x_scale = quantize_rowwise(x)
    compiled = torch.compile(fp8)
    flop = 2 * tokens * 5120 * 13824
    timings = {
        "bf16 F.linear": lambda: linear(x),
        "fp8 _scaled_mm only (pre-quantized input)": lambda: torch._scaled_mm(
            x_fp8, fp8.weight.t(), scale_a=x_scale, scale_b=fp8.weight_scale[None], bias=fp8.bias,
            out_dtype=torch.bfloat16,
        ),
        "FP8Linear eager (quantize + GEMM)": lambda: fp8(x),
        "FP8Linear torch.compile (quantize fused)": lambda: compiled(x),
    }
    with torch.no_grad():
        return {name: round(flop / (_time_ms(fn) / 1000) / 1e12, 1) for name, fn in timings.items()}


def _check_block(device: torch.device, size: int) -> dict:
    """One full-width block (a 1-layer full-size DiT, random weights, two speakers, 81 frames): FP8 vs bf16 vs fp32."""
    from engine.bench import _inputs, build_model  # the benchmark's random model and inputs, reused

    config = replace(DiTConfig(), num_layers=1)
    model = build_model(config, device, torch.bfloat16)
    inputs = _inputs(config, size, 81, device, torch.bfloat16)
    latents, timestep = inputs.pop("latents"), torch.tensor([700.0], device=device)
    with torch.no_grad():
        tokens, cond = model.embed(latents, timestep, **inputs)
        block = model.blocks[0]
        reference_block = copy.deepcopy(block).float()  # the same weights in fp32
        reference = reference_block(tokens.float(), replace(cond, context=cond.context.float(),
                                                             audio_tokens=cond.audio_tokens.float(),
                                                             token_masks=cond.token_masks.float()))
        del reference_block
        bf16 = block(tokens, cond)
        quantize_dit_fp8(model)
        fp8 = model.blocks[0](tokens, cond)
        # What the block adds to its input is what FP8 perturbs; the residual stream itself passes through exactly.
        return {
            "size": size,
            "tokens": tokens.shape[1],
            "bf16_vs_fp32": relative_error(bf16, reference),
            "fp8_vs_fp32": relative_error(fp8, reference),
            "fp8_vs_bf16": relative_error(fp8, bf16),
            "update_fp8_vs_fp32": relative_error(fp8.float() - tokens.float(), reference - tokens.float()),
            "update_bf16_vs_fp32": relative_error(bf16.float() - tokens.float(), reference - tokens.float()),
        }


def selfcheck(size: int) -> int:
    """Print a self-explanatory JSON report; return 0 when every error is within its bound, 1 otherwise."""
    if not torch.cuda.is_available():
        print("engine.quantize --selfcheck needs a CUDA GPU (compute capability >= 8.9)", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    if not supports_fp8_matmul(device):
        print(f"{torch.cuda.get_device_name()} has no FP8 GEMM (capability < 8.9)", file=sys.stderr)
        return 2
    tokens = 21 * (size // 16) ** 2
    linears = _check_linears(device, tokens)
    block = _check_block(device, size)
    speed = _ffn_gemm_speed(device, tokens)
    failures = [f"{row['layer']}: fp8 vs fp32 {row['fp8_vs_fp32']:.4f} > {LINEAR_ERROR_BOUND}"
                for row in linears if row["fp8_vs_fp32"] > LINEAR_ERROR_BOUND]
    failures += [f"{row['layer']}: _scaled_mm vs emulation {row['kernel_vs_emulation']:.4f} > "
                 f"{KERNEL_VS_EMULATION_BOUND} (scale or layout wrong)"
                 for row in linears if row["kernel_vs_emulation"] > KERNEL_VS_EMULATION_BOUND]
    if block["update_fp8_vs_fp32"] > BLOCK_ERROR_BOUND:
        failures.append(f"block update fp8 vs fp32 {block['update_fp8_vs_fp32']:.4f} > {BLOCK_ERROR_BOUND}")
    report = {
        "what": "FP8 (e4m3, per-channel weights, per-token activations, torch._scaled_mm) vs bf16 linears of the "
                "full-size MultiTalk DiT, random weights (std 0.02) and N(0,1) inputs. Errors are relative L2 "
                "(‖a−b‖/‖b‖) against an fp32 computation of the same weights; 'update' = the block's output minus "
                "its input (the residual stream passes through exactly). kernel_vs_emulation compares the CUDA "
                "kernel with the CPU-test arithmetic and must be ~bf16 rounding.",
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "bounds": {"linear_fp8_vs_fp32": LINEAR_ERROR_BOUND, "block_update_fp8_vs_fp32": BLOCK_ERROR_BOUND,
                   "kernel_vs_emulation": KERNEL_VS_EMULATION_BOUND},
        "linears": [{k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()} for row in linears],
        "block": {k: round(v, 5) if isinstance(v, float) else v for k, v in block.items()},
        "ffn_in_gemm_tflops": {"tokens": tokens, **speed},
        "result": "FAIL" if failures else "OK",
        "failures": failures,
    }
    print(json.dumps(report, indent=1))
    return 1 if failures else 0


def main() -> None:
    parser = argparse.ArgumentParser(description="FP8 linears of the DiT: a self-check of the CUDA path.")
    parser.add_argument("--selfcheck", action="store_true", help="errors and GEMM speed on this GPU; exit 1 on failure")
    parser.add_argument("--size", type=int, default=640, help="video side whose token count the checks use")
    args = parser.parse_args()
    if not args.selfcheck:
        parser.error("nothing to do: pass --selfcheck")
    sys.exit(selfcheck(args.size))


if __name__ == "__main__":
    main()
