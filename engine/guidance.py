"""Classifier-free guidance of MultiTalk: the named branches, their scales, and APG.

Owns spec §5.2-§5.4: which model calls a step makes (3 passes with separate text and audio scales,
or 2 passes when the text scale is 1, as used with the step-distilled LoRAs), how their velocities
combine, and adaptive projected guidance. Branches are passed to the model by name so that a
per-branch cache (TeaCache) never has to guess from a call count. It must not know the DiT's
internals or touch the RNG; everything here is float32 tensor arithmetic on the latent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import torch

# The latent is [C, T, h, w] (optionally with a leading batch): APG norms span these four axes.
_LATENT_DIMS = (-1, -2, -3, -4)


class Branch(StrEnum):
    """One model evaluation per step; the value is the name caches and logs see."""

    COND = "cond"  # prompt + real audio
    DROP_TEXT = "drop_text"  # negative prompt + real audio
    UNCOND = "uncond"  # negative prompt + one all-zero audio stream
    DROP_AUDIO = "drop_audio"  # prompt + one all-zero audio stream (2-pass mode only)


class VelocityModel(Protocol):
    """What the sampler calls: the flow velocity (~ noise - x0) for one branch, same shape as `latent`."""

    def __call__(
        self, latent: torch.Tensor, t: torch.Tensor, /, *, branch: str, **conditioning: Any
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class GuidanceConfig:
    """Guidance settings of a job; defaults are the reference CLI's (spec §5.5)."""

    text_scale: float = 5.0
    audio_scale: float = 4.0
    use_apg: bool = False
    apg_momentum: float = -0.75
    apg_norm_threshold: float = 55.0

    @property
    def is_two_pass(self) -> bool:
        """The reference switches to 2 passes on the text scale alone, not on the presence of a LoRA."""
        return math.isclose(self.text_scale, 1.0)

    @property
    def branches(self) -> tuple[Branch, ...]:
        """Evaluation order per step; the order matters to per-branch caches and to bit-matching."""
        if self.is_two_pass:
            return (Branch.COND, Branch.DROP_AUDIO)
        return (Branch.COND, Branch.DROP_TEXT, Branch.UNCOND)


def branch_conditions(
    config: GuidanceConfig,
    cond: Mapping[str, Any],
    *,
    negative_text: Any,
    text_key: str = "text_states",
    audio_key: str = "audio",
) -> dict[str, dict[str, Any]]:
    """The model keyword arguments of every branch, derived from those of the `cond` branch.

    The default keys are `MultiTalkDiT.embed`'s (`text_states`, `audio`); `negative_text` is the
    encoded negative prompt that replaces the prompt in the text-dropping branches.

    Image conditioning (CLIP states, conditioning latents, region masks) is shared by all branches. A dropped audio
    is a single all-zero stream `zeros_like(audio)[-1:]` even for two speakers (spec §5.2, pitfall
    17): the model then takes its one-person path.
    """
    audio = cond[audio_key]
    null_audio = torch.zeros_like(audio[-1:])
    by_branch = {
        Branch.COND: dict(cond),
        Branch.DROP_TEXT: {**cond, text_key: negative_text},
        Branch.UNCOND: {**cond, text_key: negative_text, audio_key: null_audio},
        Branch.DROP_AUDIO: {**cond, audio_key: null_audio},
    }
    return {str(branch): by_branch[branch] for branch in config.branches}


class AdaptiveProjectedGuidance:
    """APG (arXiv 2410.02416) as MultiTalk applies it to one guidance difference (spec §5.4).

    Keeps a momentum running average of the difference, clips its L2 norm, and removes its
    component along the conditional prediction (eta = 0, as the reference fixes it). Holds state:
    one instance per difference and per chunk.
    """

    def __init__(self, momentum: float, norm_threshold: float) -> None:
        self.momentum = momentum
        self.norm_threshold = norm_threshold
        self._running: torch.Tensor | None = None

    def __call__(self, diff: torch.Tensor, pred_cond: torch.Tensor) -> torch.Tensor:
        if self._running is not None:
            diff = diff + self.momentum * self._running
        self._running = diff
        if self.norm_threshold > 0:
            norm = diff.norm(p=2, dim=_LATENT_DIMS, keepdim=True)
            diff = diff * torch.clamp(self.norm_threshold / norm, max=1.0)
        # The reference projects in float64; float32 with torch's blocked reductions stays within
        # 1e-6 of it on latent-sized tensors and keeps float64 off the step loop.
        direction = torch.nn.functional.normalize(pred_cond, dim=_LATENT_DIMS)
        parallel = (diff * direction).sum(dim=_LATENT_DIMS, keepdim=True) * direction
        return diff - parallel


class Guidance:
    """Combines the branch velocities of one step; create one per chunk (APG momentum restarts)."""

    def __init__(self, config: GuidanceConfig) -> None:
        self.config = config
        self._text_apg: AdaptiveProjectedGuidance | None = None
        self._audio_apg: AdaptiveProjectedGuidance | None = None
        if config.use_apg:
            self._text_apg = AdaptiveProjectedGuidance(config.apg_momentum, config.apg_norm_threshold)
            self._audio_apg = AdaptiveProjectedGuidance(config.apg_momentum, config.apg_norm_threshold)

    @property
    def branches(self) -> tuple[Branch, ...]:
        return self.config.branches

    def velocity(
        self,
        model: VelocityModel,
        latent: torch.Tensor,
        t: torch.Tensor,
        conditions: Mapping[str, Mapping[str, Any]],
    ) -> torch.Tensor:
        """Evaluate every branch in order at (latent, t) and return the guided velocity."""
        missing = [str(b) for b in self.branches if str(b) not in conditions]
        if missing:
            raise ValueError(f"no conditioning for guidance branch(es) {missing}")
        predictions = {str(b): model(latent, t, branch=str(b), **conditions[str(b)]) for b in self.branches}
        return self.combine(predictions)

    def combine(self, predictions: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The reference's formulas, evaluated in its operation order (spec §5.2-§5.4)."""
        s_text, s_audio = self.config.text_scale, self.config.audio_scale
        cond = predictions[Branch.COND]
        if self.config.is_two_pass:
            drop_audio = predictions[Branch.DROP_AUDIO]
            if self._audio_apg is not None:
                return cond + (s_audio - 1) * self._audio_apg(cond - drop_audio, cond)
            return drop_audio + s_audio * (cond - drop_audio)
        drop_text, uncond = predictions[Branch.DROP_TEXT], predictions[Branch.UNCOND]
        if self._text_apg is not None and self._audio_apg is not None:
            text_term = (s_text - 1) * self._text_apg(cond - drop_text, cond)
            audio_term = (s_audio - 1) * self._audio_apg(drop_text - uncond, cond)
            return cond + text_term + audio_term
        return uncond + s_text * (cond - drop_text) + s_audio * (drop_text - uncond)
