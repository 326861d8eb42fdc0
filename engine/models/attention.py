"""The one attention seam of the engine's models.

Every attention in the model files goes through `attention(q, k, v, backend=...)`, so a faster kernel or a
sequence-parallel wrapper (engine/parallel registers one) applies everywhere without touching the models. The
built-in backends are PyTorch's `scaled_dot_product_attention`, which dispatches to FlashAttention / memory-efficient
kernels on GPUs, and FlashAttention-4 (`fa4`) where its optional package is installed, imported on first use. Model
files never import flash-attn, SageAttention or xfuser.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

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


def _flash_attn_func() -> Callable:
    """FlashAttention-4's entry point (the optional `flash-attn-4` package), or an error saying what to install."""
    try:
        from flash_attn.cute.interface import flash_attn_func
    except ImportError as error:
        raise RuntimeError("attention backend 'fa4' needs the flash-attn-4 package (pip install 'duet[fa4]')") from error
    return flash_attn_func


@torch.library.custom_op("duet::flash_attention_4", mutates_args=())
def _flash_attention_4(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """FlashAttention-4's forward (CuTe kernels for Hopper and Blackwell, compiled on first use). An opaque op to
    torch.compile, so compiled blocks keep it in their graph."""
    out, _ = _flash_attn_func()(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # it takes [B, L, H, d]
    return out.transpose(1, 2)


@_flash_attention_4.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    batch, heads, length, _ = q.shape
    return q.new_empty(batch, length, heads, v.shape[-1]).transpose(1, 2)


_BACKENDS: dict[str, AttentionFn] = {
    "sdpa": _sdpa,
    "math": _sdpa_only(SDPBackend.MATH),  # unfused: slow, the same arithmetic everywhere (debugging numerics)
    "cudnn": _sdpa_only(SDPBackend.CUDNN_ATTENTION),
    "flash": _sdpa_only(SDPBackend.FLASH_ATTENTION),
    "fa4": _flash_attention_4,  # exact, faster than cuDNN's on Hopper (docs/benchmarks.md); GPUs only
}


def register_attention_backend(name: str, fn: AttentionFn) -> None:
    """Make `fn` selectable as `backend=name`; it must honour `attention`'s contract (layout, scale, no mask)."""
    _BACKENDS[name] = fn


def attention_backends() -> tuple[str, ...]:
    return tuple(_BACKENDS)


def unavailable_reason(backend: str) -> str | None:
    """Why `backend` cannot run in this process (an optional package missing), or None: asked before any model loads,
    not at the first forward."""
    if backend != "fa4":  # the others are PyTorch's own
        return None
    try:
        _flash_attn_func()
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
