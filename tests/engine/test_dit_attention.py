"""The attention seam: one contract (layout, scale, no mask) whatever the backend."""

from __future__ import annotations

import sys

import pytest
import torch

from engine.models.attention import attention, attention_backends


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    weights = torch.softmax(q.double() @ k.double().transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    return (weights @ v.double()).to(q.dtype)


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_backends_compute_scaled_softmax_attention(backend):
    generator = torch.Generator().manual_seed(3)
    q = torch.randn(2, 4, 7, 16, generator=generator)
    k = torch.randn(2, 4, 5, 16, generator=generator)
    v = torch.randn(2, 4, 5, 3, generator=generator)  # values may be narrower than q/k (the reference map uses 3)
    out = attention(q, k, v, backend=backend)
    assert out.shape == (2, 4, 7, 3)
    torch.testing.assert_close(out, explicit_attention(q, k, v), rtol=1e-5, atol=1e-6)


def test_unknown_backend_is_named_in_the_error():
    q = torch.zeros(1, 1, 1, 8)
    with pytest.raises(ValueError, match="'flash4'.*sdpa"):
        attention(q, q, q, backend="flash4")
    assert {"sdpa", "math"} <= set(attention_backends())


def fake_flash_attn_func(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, None]:
    """FlashAttention-4's `flash_attn_func` contract on the CPU (its kernels need a Hopper or Blackwell GPU):
    [B, L, H, d] in, with the head dim contiguous, ([B, L, H, dv], lse) out."""
    assert q.stride(-1) == 1 and k.stride(-1) == 1 and v.stride(-1) == 1
    out = explicit_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2).contiguous(), None


@pytest.fixture
def flash_attention_4(monkeypatch):
    interface = type(sys)("flash_attn.cute.interface")
    interface.flash_attn_func = fake_flash_attn_func
    for name in ("flash_attn", "flash_attn.cute"):
        monkeypatch.setitem(sys.modules, name, type(sys)(name))
    monkeypatch.setitem(sys.modules, "flash_attn.cute.interface", interface)


@pytest.mark.parametrize("token_major", [True, False])
def test_fa4_backend_hands_the_kernel_tokens_then_heads(flash_attention_4, token_major):
    """The kernel takes [B, L, H, d]; the seam's [B, H, L, d] must be transposed on the way in and out. With q and
    k swapped between heads and tokens, attention would mix heads and the result would differ."""
    generator = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 9, 3, 16, generator=generator) for _ in range(3))  # [B, L, H, d], as projected
    q, k, v = (t.transpose(1, 2) if token_major else t.transpose(1, 2).contiguous() for t in (q, k, v))
    torch.testing.assert_close(attention(q, k, v, backend="fa4"), explicit_attention(q, k, v), rtol=1e-5, atol=1e-6)


def test_fa4_backend_stays_in_a_compiled_graph(flash_attention_4):
    """An opaque op to torch.compile: a whole block compiles as one graph (fullgraph fails on any break)."""
    generator = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 3, 8, 16, generator=generator) for _ in range(3))
    compiled = torch.compile(lambda q, k, v: attention(q * 2, k, v, backend="fa4") + 1, backend="eager",
                             fullgraph=True)  # fmt: skip
    torch.testing.assert_close(compiled(q, k, v), explicit_attention(q * 2, k, v) + 1, rtol=1e-5, atol=1e-6)


def test_fa4_backend_without_its_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn.cute.interface", None)  # import fails
    q = torch.zeros(1, 1, 2, 8)
    with pytest.raises(RuntimeError, match=r"flash-attn-4.*duet\[fa4\]"):
        attention(q, q, q, backend="fa4")
