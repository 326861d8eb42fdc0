"""The attention seam: one contract (layout, scale, no mask) whatever the backend."""

from __future__ import annotations

import sys

import pytest
import torch

from engine.models.attention import FP8_DTYPE, FP8_MAX, _flash_attention_3, _per_head_fp8, attention, attention_backends


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


def fake_flash_attn_3_func(q, k, v, *, q_descale=None, k_descale=None, v_descale=None) -> torch.Tensor:
    """FlashAttention-3's `flash_attn_func` contract on the CPU (its kernels need a Hopper GPU): [B, L, H, 128] in,
    bf16 or float8 with fp32 descales [B, H], and [B, L, H, 128] out, bf16 for float8 inputs."""
    assert q.shape[-1] == v.shape[-1] == 128, "the Duet build carries head dim 128 only"
    assert q.stride(-1) == 1 and k.stride(-1) == 1 and v.stride(-1) == 1
    if q.dtype == FP8_DTYPE:
        descales = (q_descale, k_descale, v_descale)
        assert all(d.dtype == torch.float32 and d.shape == (q.shape[0], q.shape[2]) for d in descales)
        q, k, v = (t.float() * d[:, None, :, None] for t, d in zip((q, k, v), descales))
        return explicit_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2).bfloat16()
    assert q_descale is None and k_descale is None and v_descale is None
    return explicit_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2).contiguous()


@pytest.fixture
def flash_attention_3(monkeypatch):
    interface = type(sys)("flash_attn_interface")
    interface.flash_attn_func = fake_flash_attn_3_func
    monkeypatch.setitem(sys.modules, "flash_attn_interface", interface)


@pytest.mark.parametrize("token_major", [True, False])
@pytest.mark.parametrize("backend", ["fa4", "fa3"])
def test_flash_backends_hand_the_kernel_tokens_then_heads(flash_attention_4, flash_attention_3, backend, token_major):
    """The kernels take [B, L, H, d]; the seam's [B, H, L, d] must be transposed on the way in and out. With q and
    k swapped between heads and tokens, attention would mix heads and the result would differ."""
    generator = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 9, 3, 128, generator=generator) for _ in range(3))  # [B, L, H, d], as projected
    q, k, v = (t.transpose(1, 2) if token_major else t.transpose(1, 2).contiguous() for t in (q, k, v))
    torch.testing.assert_close(attention(q, k, v, backend=backend), explicit_attention(q, k, v), rtol=1e-5, atol=1e-6)


def relative_error(out: torch.Tensor, exact: torch.Tensor) -> float:
    return float((out.float() - exact.float()).norm() / exact.float().norm())


def projected_qkv(key_offset: float, heads: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """bf16 [1, H, 64, 128] with sharp attention (scores of a few units) and keys sharing a per-channel offset, as
    the key projection's bias gives them."""
    generator = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(1, heads, 64, 128, generator=generator) for _ in range(3))
    k = k + key_offset * torch.randn(1, heads, 1, 128, generator=generator)
    return q.mul(3).bfloat16(), k.bfloat16(), v.bfloat16()


def test_fa3_fp8_smooths_the_keys_before_quantizing(flash_attention_3):
    """With a shared key offset left in, the keys' float8 grid is spent on the offset (32 % error here); smoothed
    keys keep the error of float8 inputs without an offset (7 %): the offset moves every score of a query alike, so
    softmax ignores it."""
    q, k, v = projected_qkv(key_offset=8.0)
    exact = explicit_attention(q.double(), k.double(), v.double())
    smoothed = attention(q, k, v, backend="fa3_fp8")
    assert smoothed.dtype == torch.bfloat16 and smoothed.shape == exact.shape
    (q8, q_descale), (k8, k_descale), (v8, v_descale) = (_per_head_fp8(t) for t in (q, k, v))
    unsmoothed = _flash_attention_3(q8, k8, v8, torch.stack((q_descale, k_descale, v_descale)))
    assert relative_error(smoothed, exact) < 0.1 < relative_error(unsmoothed, exact)


def test_per_head_fp8_scales_are_powers_of_two_that_fit_each_head():
    """Dividing by a power of two is exact in bf16, so the float8 cast is the only rounding; each head's largest
    value lands in the top octave of float8 (224, 448] instead of overflowing or wasting range."""
    generator = torch.Generator().manual_seed(7)
    x = (torch.randn(2, 3, 50, 128, generator=generator) * torch.tensor([1e-3, 1.0, 300.0])[:, None, None]).bfloat16()
    x8, descale = _per_head_fp8(x)
    assert x8.dtype == FP8_DTYPE and descale.shape == (2, 3) and descale.dtype == torch.float32
    assert torch.equal(descale, torch.exp2(torch.log2(descale).round()))
    top = x8.float().abs().amax(dim=(2, 3))
    assert bool(((top > FP8_MAX / 2) & (top <= FP8_MAX)).all())
    restored = x8.float() * descale[:, :, None, None]
    assert bool(((restored - x.float()).abs() <= x.float().abs() / 16 + descale[:, :, None, None] * 2**-9).all())


@pytest.mark.parametrize("backend", ["fa3", "fa3_fp8"])
def test_fa3_backends_leave_other_head_dims_to_pytorch(flash_attention_3, backend):
    """The reference map attends with 8-wide values, which the FA3 build does not carry (the fake asserts 128)."""
    generator = torch.Generator().manual_seed(8)
    q, k = torch.randn(1, 2, 6, 128, generator=generator), torch.randn(1, 2, 5, 128, generator=generator)
    v = torch.randn(1, 2, 5, 8, generator=generator)
    torch.testing.assert_close(attention(q, k, v, backend=backend), explicit_attention(q, k, v), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["fa4", "fa3", "fa3_fp8"])
def test_flash_backends_stay_in_a_compiled_graph(flash_attention_4, flash_attention_3, backend):
    """Opaque ops to torch.compile: a whole block compiles as one graph (fullgraph fails on any break)."""
    generator = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 3, 8, 128, generator=generator).bfloat16() for _ in range(3))
    compiled = torch.compile(lambda q, k, v: attention(q * 2, k, v, backend=backend) + 1, backend="eager",
                             fullgraph=True)  # fmt: skip
    torch.testing.assert_close(compiled(q, k, v), attention(q * 2, k, v, backend=backend) + 1)
    tolerance = 0.15 if backend == "fa3_fp8" else 0.01
    assert relative_error(compiled(q, k, v) - 1, explicit_attention(q * 2, k, v)) < tolerance


@pytest.mark.parametrize(
    ("backend", "install"),
    [("fa4", r"flash-attn-4.*duet\[fa4\]"), ("fa3", "tools/fa3_build.sh"), ("fa3_fp8", "tools/fa3_build.sh")],
)
def test_flash_backends_without_their_package_say_what_to_install(monkeypatch, backend, install):
    for module in ("flash_attn.cute.interface", "flash_attn_interface"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails
    q = torch.zeros(1, 1, 2, 128)
    with pytest.raises(RuntimeError, match=install):
        attention(q, q, q, backend=backend)
