"""Merging LoRA files (FusionX, lightx2v step distillation) into a Wan DiT's weights at load time.

Owns the key format the MultiTalk reference accepts (spec §8.4): under the prefix `diffusion_model.`,
`<name>.lora_down.weight` + `<name>.lora_up.weight` add `scale · up @ down` to `<name>.weight`,
`<name>.diff` adds `scale · diff` to `<name>.weight` and `<name>.diff_b` adds `scale · diff_b` to
`<name>.bias`; a stored `<name>.alpha` is ignored, as the reference ignores it. Works on any module
whose parameter names are the Wan DiT keys (spec §4.1). Reading the file is the only I/O here.

Where the reference is silent we are strict, because a half-applied LoRA renders plausible but
wrong videos: an unknown key, a missing half of a pair, a target the model lacks, or a shape that
does not fit raises `LoRAError` naming it, before any weight is touched.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from safetensors.torch import load_file
from torch import nn

from storage.errors import DuetError

logger = logging.getLogger(__name__)

PREFIX = "diffusion_model."
_DOWN, _UP, _DIFF, _DIFF_B, _ALPHA = ".lora_down.weight", ".lora_up.weight", ".diff", ".diff_b", ".alpha"


class LoRAError(DuetError):
    """A LoRA file that does not fit the model: the admin detail names the file and the key."""

    def __init__(self, detail: str) -> None:
        super().__init__("The selected LoRA could not be applied to the model.", detail)


@dataclass(frozen=True)
class LowRankUpdate:
    """`up @ down` added to a weight matrix (a `lora_down` / `lora_up` pair)."""

    target: str  # model parameter name, e.g. "blocks.0.self_attn.q.weight"
    up: torch.Tensor  # [out, rank]
    down: torch.Tensor  # [rank, in]

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.up.shape[0], self.down.shape[1]))

    def delta(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The unscaled update; the reference casts the file to the weight dtype before the product."""
        return self.up.to(device=device, dtype=dtype) @ self.down.to(device=device, dtype=dtype)


@dataclass(frozen=True)
class FullUpdate:
    """A full-shape difference (`diff` for weights such as norm scales, `diff_b` for biases)."""

    target: str
    diff: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return self.diff.shape

    def delta(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return self.diff.to(device=device, dtype=dtype)


LoRAUpdate = LowRankUpdate | FullUpdate


def parse_lora(state_dict: Mapping[str, torch.Tensor], source: str = "<memory>") -> list[LoRAUpdate]:
    """The updates a LoRA state dict describes, in file order; raises on keys outside the format."""
    updates: list[LoRAUpdate] = []
    unknown: list[str] = []
    for key, tensor in state_dict.items():
        name = key[len(PREFIX) :] if key.startswith(PREFIX) else None
        if name is None:
            unknown.append(key)
        elif name.endswith(_DOWN):
            base = name[: -len(_DOWN)]
            up = state_dict.get(PREFIX + base + _UP)
            if up is None:
                raise LoRAError(f"{source}: {key} has no matching {PREFIX}{base}{_UP}")
            if up.ndim != 2 or tensor.ndim != 2 or up.shape[1] != tensor.shape[0]:
                shapes = f"{tuple(tensor.shape)} and its up {tuple(up.shape)}"
                raise LoRAError(f"{source}: {key} {shapes} are not a rank pair")
            updates.append(LowRankUpdate(target=base + ".weight", up=up, down=tensor))
        elif name.endswith(_UP):
            if PREFIX + name[: -len(_UP)] + _DOWN not in state_dict:
                raise LoRAError(f"{source}: {key} has no matching {_DOWN}")
        elif name.endswith(_DIFF_B):
            updates.append(FullUpdate(target=name[: -len(_DIFF_B)] + ".bias", diff=tensor))
        elif name.endswith(_DIFF):
            updates.append(FullUpdate(target=name[: -len(_DIFF)] + ".weight", diff=tensor))
        elif not name.endswith(_ALPHA):
            unknown.append(key)
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "")
        raise LoRAError(f"{source}: keys outside the accepted LoRA format (lora_down/lora_up/diff/diff_b): {shown}")
    if not updates:
        raise LoRAError(f"{source}: no LoRA weights found")
    return updates


@torch.no_grad()
def merge_lora(model: nn.Module, updates: Sequence[LoRAUpdate], scale: float, source: str = "<memory>") -> int:
    """Add `scale · delta` to each target parameter in place, in the parameter's dtype and device.

    Every target is checked before the first write, so a bad file leaves the model unchanged.
    Returns the number of parameters updated.
    """
    params = dict(model.named_parameters())
    for update in updates:
        param = params.get(update.target)
        if param is None:
            raise LoRAError(f"{source}: the model has no parameter {update.target}")
        if param.shape != update.shape:
            shapes = f"{tuple(param.shape)} but the LoRA update is {tuple(update.shape)}"
            raise LoRAError(f"{source}: {update.target} is {shapes}")
    for update in updates:
        param = params[update.target]
        param.add_(update.delta(param.dtype, param.device) * scale)
    return len(updates)


def load_loras(model: nn.Module, paths: Sequence[str | os.PathLike[str]], scales: Sequence[float]) -> None:
    """Merge each LoRA file with its scale, in order; one scale per file (the reference's zip drops extras)."""
    if len(paths) != len(scales):
        raise ValueError(f"{len(paths)} LoRA file(s) but {len(scales)} scale(s): give one scale per file")
    for path, scale in zip(paths, scales):
        if not os.path.isfile(path):
            raise LoRAError(f"LoRA file not found: {path}")
        updates = parse_lora(load_file(str(path)), source=str(path))
        count = merge_lora(model, updates, scale, source=str(path))
        logger.info("merged LoRA", extra={"action": "lora_merge", "path": str(path), "scale": scale, "params": count})
