"""TeaCache for the MultiTalk DiT: skip the transformer blocks when the timestep barely moved.

Owns the skip decision and the cached block residuals of spec §5.6 (the reference's `use_ret_steps`
variant, the only one it runs). Unlike the reference, all state lives in one `TeaCache` object that
the render stage creates per job and resets per chunk, keyed by the branch NAME the sampler passes
(`engine.guidance.Branch`), so 2-pass guidance, interrupted jobs and streaming chunks cannot mix
caches. The DiT calls `run_blocks`; it must not keep any of this state itself.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch

# Rescaling polynomials fitted by the MultiTalk authors (highest degree first), one per size
# bucket; the input is the relative L1 change of the time-modulation vector e0 between calls.
TEACACHE_COEFFICIENTS: dict[str, tuple[float, ...]] = {
    "480p": (2.57151496e05, -3.54229917e04, 1.40286849e03, -1.35890334e01, 1.32517977e-01),
    "720p": (8.10705460e03, 2.13393892e03, -3.72934672e02, 1.66203073e01, -4.17769401e-02),
}
# The reference always computes the first 5 steps of every branch (its `ret_steps` = 5 x 3 calls).
WARMUP_STEPS = 5


def _polyval(coefficients: tuple[float, ...], x: float) -> float:
    """Horner evaluation, highest degree first, in Python floats like `np.poly1d`."""
    value = 0.0
    for c in coefficients:
        value = value * x + c
    return value


@dataclass
class _BranchState:
    calls: int = 0
    accumulated: float = 0.0
    previous_indicator: torch.Tensor | None = None
    residual: torch.Tensor | None = None


class TeaCache:
    """Per-job TeaCache state: one accumulator, previous indicator and residual per branch name.

    `threshold` is the reference's `--teacache_thresh` (0.2 default; higher skips more). `size` picks
    the polynomial and must be a known bucket: the reference silently keeps a stale one otherwise.
    """

    def __init__(self, size: str, threshold: float = 0.2, warmup_steps: int = WARMUP_STEPS) -> None:
        if size not in TEACACHE_COEFFICIENTS:
            known = sorted(TEACACHE_COEFFICIENTS)
            raise ValueError(f"no TeaCache coefficients for size bucket {size!r}; known: {known}")
        if threshold <= 0:
            raise ValueError(f"TeaCache threshold must be positive, got {threshold}")
        self.size = size
        self.coefficients = TEACACHE_COEFFICIENTS[size]
        self.threshold = threshold
        self.warmup_steps = warmup_steps
        self._branches: dict[str, _BranchState] = {}
        # Block passes run / replaced by a cached residual, per branch, over the whole job (for bench).
        self.computed: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()

    def reset(self) -> None:
        """Forget every branch's history; call at the start of each chunk (its latent is new).

        This is what the reference does in 3-pass streaming, where its call counter wraps per chunk.
        """
        self._branches.clear()

    def _should_compute(self, state: _BranchState, indicator: torch.Tensor) -> bool:
        """Decide for this call of a branch and record `indicator` (the DiT's e0) for its next call."""
        if state.calls < self.warmup_steps or state.previous_indicator is None:
            compute = True
        else:
            previous = state.previous_indicator
            # One host sync per model call: the decision picks which kernels run next.
            change = ((indicator - previous).abs().mean() / previous.abs().mean()).item()
            state.accumulated += _polyval(self.coefficients, change)
            compute = state.accumulated >= self.threshold
        if compute:
            state.accumulated = 0.0
        state.previous_indicator = indicator.detach().clone()
        state.calls += 1
        return compute

    def run_blocks(
        self,
        branch: str,
        indicator: torch.Tensor,
        hidden: torch.Tensor,
        blocks: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """`blocks(hidden)`, or `hidden` plus the residual the blocks added on this branch's last full pass."""
        state = self._branches.setdefault(branch, _BranchState())
        if not self._should_compute(state, indicator):  # never on a branch's first call: residual is set
            self.skipped[branch] += 1
            return hidden + state.residual
        out = blocks(hidden)
        state.residual = out - hidden
        self.computed[branch] += 1
        return out
