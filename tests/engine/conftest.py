"""Shared helpers for the engine tests: committed parity fixtures and the relative-error measure they use."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

FIXTURES = Path(__file__).parent / "fixtures"


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).norm() / expected.norm()).item()


@pytest.fixture(scope="session")
def relative_error():
    """relative_error(actual, expected) -> ‖actual − expected‖ / ‖expected‖ over the whole tensor (float64)."""
    return _relative_error


@pytest.fixture(scope="session")
def load_fixture():
    """load_fixture("dit/pieces") -> the tensors of fixtures/dit/pieces.safetensors."""

    def load(name: str) -> dict[str, torch.Tensor]:
        return load_file(FIXTURES / f"{name}.safetensors")

    return load
