"""TeaCache: per-branch state, warm-up, skip decisions and residual reuse (spec §5.6)."""

from __future__ import annotations

import pytest
import torch

from engine.cache import TEACACHE_COEFFICIENTS, WARMUP_STEPS, TeaCache


class CountingBlocks:
    """Stands in for the 40 transformer blocks: an affine map that counts its runs."""

    def __init__(self):
        self.runs = 0

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        self.runs += 1
        return 2.0 * hidden + 1.0


def _indicator(t: float) -> torch.Tensor:
    return torch.full((1, 6, 8), t)


def _decisions(cache: TeaCache, branch: str, indicators: list[torch.Tensor]) -> list[bool]:
    """True where the blocks ran."""
    blocks = CountingBlocks()
    out = []
    for e0 in indicators:
        before = blocks.runs
        cache.run_blocks(branch, e0, torch.zeros(3), blocks)
        out.append(blocks.runs > before)
    return out


def test_unknown_size_or_threshold_raises():
    with pytest.raises(ValueError, match="multitalk-480"):
        TeaCache("multitalk-480")  # the reference's CLI name is not a Duet size bucket
    with pytest.raises(ValueError):
        TeaCache("480p", threshold=0.0)
    assert set(TEACACHE_COEFFICIENTS) == {"480p", "720p"}


def test_warmup_steps_always_compute_even_without_change():
    cache = TeaCache("480p", threshold=10.0)  # a threshold that would skip everything afterwards
    decisions = _decisions(cache, "cond", [_indicator(1.0)] * (WARMUP_STEPS + 3))
    assert decisions == [True] * WARMUP_STEPS + [False] * 3


def test_accumulated_change_triggers_a_full_pass_and_resets():
    """480p polynomial at zero change is 0.1325: one skip (0.13 < 0.2), then 0.27 >= 0.2 computes."""
    cache = TeaCache("480p", threshold=0.2)
    decisions = _decisions(cache, "cond", [_indicator(1.0)] * (WARMUP_STEPS + 6))
    assert decisions[WARMUP_STEPS:] == [False, True, False, True, False, True]


def test_large_indicator_changes_never_skip():
    cache = TeaCache("720p", threshold=0.2)
    indicators = [_indicator(2.0**k) for k in range(WARMUP_STEPS + 5)]  # relative change 1 each call
    assert all(_decisions(cache, "cond", indicators))


def test_skipped_pass_adds_the_last_residual():
    cache = TeaCache("480p", threshold=0.2)
    blocks = CountingBlocks()
    e0 = _indicator(1.0)
    for _ in range(WARMUP_STEPS):
        last_in = torch.randn(4)
        last_out = cache.run_blocks("cond", e0, last_in, blocks)
    hidden = torch.randn(4)
    out = cache.run_blocks("cond", e0, hidden, blocks)
    assert blocks.runs == WARMUP_STEPS
    torch.testing.assert_close(out, hidden + (last_out - last_in))
    assert cache.skipped["cond"] == 1 and cache.computed["cond"] == WARMUP_STEPS


def test_branches_keep_separate_state_in_two_pass_mode():
    """Interleaving cond/drop_audio gives each branch the decisions it would get alone (the reference drifts)."""
    indicators = [_indicator(1.0)] * (WARMUP_STEPS + 4)
    alone = _decisions(TeaCache("480p"), "cond", indicators)
    cache = TeaCache("480p")
    cond_blocks, audio_blocks = CountingBlocks(), CountingBlocks()
    cond_residual_input = torch.ones(2)
    interleaved = []
    for e0 in indicators:
        before = cond_blocks.runs
        cache.run_blocks("cond", e0, cond_residual_input, cond_blocks)
        cache.run_blocks("drop_audio", e0, -cond_residual_input, audio_blocks)
        interleaved.append(cond_blocks.runs > before)
    assert interleaved == alone
    assert cond_blocks.runs == audio_blocks.runs
    # The next call skips; it must add drop_audio's residual (2h+1 - h at h=-1: 0), not cond's (2).
    skipped_before = cache.skipped["drop_audio"]
    out = cache.run_blocks("drop_audio", indicators[0], torch.zeros(2), audio_blocks)
    assert cache.skipped["drop_audio"] == skipped_before + 1
    torch.testing.assert_close(out, torch.zeros(2))


def test_reset_restarts_the_warmup_for_a_new_chunk():
    cache = TeaCache("480p", threshold=10.0)
    _decisions(cache, "cond", [_indicator(1.0)] * (WARMUP_STEPS + 2))
    cache.reset()
    assert _decisions(cache, "cond", [_indicator(1.0)] * WARMUP_STEPS) == [True] * WARMUP_STEPS
    assert cache.computed["cond"] == 2 * WARMUP_STEPS  # job totals survive the reset
