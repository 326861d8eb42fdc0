"""The attention seam: one contract (layout, scale, no mask) whatever the backend."""

from __future__ import annotations

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
