"""The CLIP image tower (open-clip XLM-RoBERTa-large ViT-H/14) that embeds the conditioning frame.

Wan uses only the vision transformer, and only the output of its first 31 of 32 blocks: no post-norm,
no pooling, no projection. transformers' `CLIPVisionModel` built with 31 layers computes exactly that
as its `last_hidden_state` (pre-norm blocks, exact GELU, LayerNorm eps 1e-5, bias-free patch conv,
class token + learned positions, `pre_layrnorm` after adding positions; its post-norm only touches the
pooled output). The 32nd block is never loaded. tests/engine/test_clip_parity.py holds it to the
reference's own outputs.

Preprocessing is the reference's, not CLIP's usual one: the [-1, 1] frame is squashed (aspect ratio not
kept) to 224x224 by bicubic interpolation without antialiasing, mapped to [0, 1] and normalised.

No file I/O here: engine/weights.py reads the open-clip `.pth` and drops the text tower.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel


@dataclass(frozen=True)
class CLIPConfig:
    """Shape of the image tower; the defaults are ViT-H/14 at 224 px, cut to 31 blocks as Wan runs it."""

    image_size: int = 224
    patch_size: int = 14
    dim: int = 1280
    mlp_dim: int = 5120
    num_heads: int = 16
    num_layers: int = 31  # of the checkpoint's 32: Wan takes the output of the 31st block
    norm_eps: float = 1e-5
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

    @classmethod
    def tiny(cls) -> CLIPConfig:
        """Narrow and shallow, but the real 224 px / 14 px grid: 257 tokens, as the DiT's image context expects."""
        return cls(dim=32, mlp_dim=64, num_heads=2, num_layers=2)

    @property
    def num_tokens(self) -> int:
        """Class token + patches: 257 at full size."""
        return (self.image_size // self.patch_size) ** 2 + 1

    def embedding_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of the class and position embeddings in `WanCLIPImageEncoder`'s state dict."""
        return {
            "vision.embeddings.class_embedding": (self.dim,),
            "vision.embeddings.position_embedding.weight": (self.num_tokens, self.dim),
        }


class WanCLIPImageEncoder(nn.Module):
    """Frames in [-1, 1] of any size -> [B, num_tokens, dim] features of the 31st block."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        self.vision = CLIPVisionModel(
            CLIPVisionConfig(
                hidden_size=config.dim,
                intermediate_size=config.mlp_dim,
                num_hidden_layers=config.num_layers,
                num_attention_heads=config.num_heads,
                image_size=config.image_size,
                patch_size=config.patch_size,
                hidden_act="gelu",  # exact (erf) GELU
                layer_norm_eps=config.norm_eps,
                attention_dropout=0.0,
            )
        )
        self.register_buffer("pixel_mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> [B, 3, size, size] CLIP-normalised, computed in fp32."""
        size = (self.config.image_size, self.config.image_size)
        pixels = F.interpolate(frames.float(), size=size, mode="bicubic", align_corners=False)
        return (pixels * 0.5 + 0.5 - self.pixel_mean) / self.pixel_std

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> [B, num_tokens, dim] in the weights' dtype."""
        pixels = self.preprocess(frames).to(self.vision.embeddings.patch_embedding.weight.dtype)
        return self.vision(pixel_values=pixels).last_hidden_state
