"""The one attention seam of the engine's models.

Every attention in the model files goes through `attention(q, k, v, backend=...)`, so a faster kernel or a
sequence-parallel wrapper (engine/parallel registers one) applies everywhere without touching the models. The
built-in backends are PyTorch's `scaled_dot_product_attention`, which dispatches to FlashAttention / memory-efficient
kernels on GPUs, and, where their optional packages are installed (imported on first use), FlashAttention-4 (`fa4`)
and FlashAttention-3 (`fa3`, and `fa3_fp8`: its kernel on float8 inputs, the fastest on Hopper but not exact).
Model files never import flash-attn, SageAttention or xfuser.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8_DTYPE).max  # 448

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

DEFAULT_BACKEND = "sdpa"


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v)


def _sdpa_only(kernel: SDPBackend) -> AttentionFn:
    """SDPA restricted to one kernel: on Hopper cuDNN's is the fastest exact one, but SDPA prefers flash."""

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with sdpa_kernel(kernel):
            return F.scaled_dot_product_attention(q, k, v)

    return run


_KERNEL_PACKAGES = {  # backend -> (module with `flash_attn_func`, how to install it)
    "fa4": ("flash_attn.cute.interface", "the flash-attn-4 package (pip install 'duet[fa4]')"),
    "fa3": ("flash_attn_interface", "FlashAttention-3 built for Hopper (bash tools/fa3_build.sh)"),
}
_KERNEL_PACKAGES["fa3_fp8"] = _KERNEL_PACKAGES["fa3"]


def _flash_attn_func(backend: str) -> Callable:
    """The optional package's `flash_attn_func` behind `backend`, or an error saying what to install."""
    module, install = _KERNEL_PACKAGES[backend]
    try:
        return importlib.import_module(module).flash_attn_func
    except ImportError as error:
        raise RuntimeError(f"attention backend {backend!r} needs {install}") from error


def _fake_token_major_output(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The kernels' output for torch.compile's tracing: [B, L, H, dv] memory seen as [B, H, L, dv], in q's dtype
    (the FP8 kernel writes bf16)."""
    batch, heads, length, _ = q.shape
    dtype = torch.bfloat16 if q.dtype == FP8_DTYPE else q.dtype
    return q.new_empty(batch, length, heads, v.shape[-1], dtype=dtype).transpose(1, 2)


@torch.library.custom_op("duet::flash_attention_4", mutates_args=())
def _flash_attention_4(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """FlashAttention-4's forward (CuTe kernels for Hopper and Blackwell, compiled on first use). An opaque op to
    torch.compile, so compiled blocks keep it in their graph."""
    out, _ = _flash_attn_func("fa4")(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # it takes [B, L, H, d]
    return out.transpose(1, 2)


@_flash_attention_4.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _fake_token_major_output(q, v)


@torch.library.custom_op("duet::flash_attention_3", mutates_args=())
def _flash_attention_3(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, descales: torch.Tensor | None = None
) -> torch.Tensor:
    """FlashAttention-3's forward (Hopper). bf16 inputs, or float8 ones with `descales` [3, B, H] (q, k, v: the
    factors that take each head back to its real scale); the output is bf16 either way."""
    q_descale, k_descale, v_descale = (None, None, None) if descales is None else descales.unbind(0)
    out = _flash_attn_func("fa3")(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),  # it takes [B, L, H, d]
        q_descale=q_descale, k_descale=k_descale, v_descale=v_descale,
    )  # fmt: skip
    return out.transpose(1, 2)


@_flash_attention_3.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, descales: torch.Tensor | None = None) -> torch.Tensor:
    return _fake_token_major_output(q, v)


def _fits_fa3(q: torch.Tensor, v: torch.Tensor) -> bool:
    """The FA3 build carries only the head dim of every large attention in the DiT (128, tools/fa3_build.sh); the
    reference map's 8-wide values and other small calls take PyTorch's kernel."""
    return q.shape[-1] == v.shape[-1] == 128


def _fa3(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _flash_attention_3(q, k, v) if _fits_fa3(q, v) else _sdpa(q, k, v)


def _per_head_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, H, L, d] -> (float8 e4m3, fp32 descale [B, H]) with x ≈ fp8 * descale per head. The scale is a power of
    two, so dividing by it is exact in bf16 and the cast to float8 is the only rounding."""
    amax = x.abs().amax(dim=(2, 3)).float().clamp(min=2**-60)
    descale = torch.exp2(torch.ceil(torch.log2(amax / FP8_MAX)))
    return (x / descale[:, :, None, None].to(x.dtype)).to(FP8_DTYPE), descale


def _fa3_fp8(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """FA3 on float8 q, k, v (per-head scales). The keys lose their mean over tokens first: that shifts every score
    of a query by the same amount (softmax is unchanged) and leaves the float8 grid for what tells keys apart
    (SageAttention's "smooth K")."""
    if not _fits_fa3(q, v):
        return _sdpa(q, k, v)
    k = k - k.mean(dim=2, keepdim=True, dtype=torch.float32).to(k.dtype)
    (q8, q_descale), (k8, k_descale), (v8, v_descale) = (_per_head_fp8(t) for t in (q, k, v))
    return _flash_attention_3(q8, k8, v8, torch.stack((q_descale, k_descale, v_descale))).to(q.dtype)


_BACKENDS: dict[str, AttentionFn] = {
    "sdpa": _sdpa,
    "math": _sdpa_only(SDPBackend.MATH),  # unfused: slow, the same arithmetic everywhere (debugging numerics)
    "cudnn": _sdpa_only(SDPBackend.CUDNN_ATTENTION),
    "flash": _sdpa_only(SDPBackend.FLASH_ATTENTION),
    "fa4": _flash_attention_4,  # exact, faster than cuDNN's on Hopper (docs/benchmarks.md); GPUs only
    "fa3": _fa3,  # exact, Hopper only
    "fa3_fp8": _fa3_fp8,  # float8 attention, Hopper only; its deviation from exact is in docs/benchmarks.md
}


def register_attention_backend(name: str, fn: AttentionFn) -> None:
    """Make `fn` selectable as `backend=name`; it must honour `attention`'s contract (layout, scale, no mask)."""
    _BACKENDS[name] = fn


def attention_backends() -> tuple[str, ...]:
    return tuple(_BACKENDS)


def unavailable_reason(backend: str) -> str | None:
    """Why `backend` cannot run in this process (an optional package missing), or None: asked before any model loads,
    not at the first forward."""
    if backend not in _KERNEL_PACKAGES:  # the others are PyTorch's own
        return None
    try:
        _flash_attn_func(backend)
    except RuntimeError as error:
        return str(error)
    return None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, backend: str = DEFAULT_BACKEND) -> torch.Tensor:
    """Non-causal, unmasked softmax attention with scale 1/sqrt(head_dim).

    q: [B, H, Lq, d], k: [B, H, Lk, d], v: [B, H, Lk, dv] -> [B, H, Lq, dv], in the inputs' dtype.
    """
    try:
        fn = _BACKENDS[backend]
    except KeyError:
        raise ValueError(f"unknown attention backend {backend!r}; known: {', '.join(_BACKENDS)}") from None
    return fn(q, k, v)
