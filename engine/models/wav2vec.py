"""wav2vec2 speech features at the video frame rate (chinese-wav2vec2-base, fp32 on the CPU in the reference).

MultiTalk does not use wav2vec2's own output rate: it runs the convolutional feature encoder (50 Hz),
linearly interpolates those features in time (`align_corners=True`) to exactly one row per 25 fps video
frame, and only then runs the feature projection, positional convolution and the 12 transformer layers.
It keeps every transformer layer's output (not the pre-transformer embedding) as `[frames, 12, 768]`.
The network is transformers' `Wav2Vec2Model`; only that forward order is ours.
tests/engine/test_wav2vec_parity.py holds it to the reference's own outputs.

No file I/O here: engine/weights.py reads the HF folder (config, weights, preprocessor config).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Wav2Vec2Config, Wav2Vec2Model

SAMPLE_RATE = 16000
VIDEO_FPS = 25


def video_frame_count(num_samples: int, sample_rate: int = SAMPLE_RATE, fps: int = VIDEO_FPS) -> int:
    """How many video frames a track covers, as the reference computes it.

    `int(seconds * fps)` in float64, deliberately not `num_samples // 640`: the two differ for some exact
    multiples of 640 samples (e.g. 18560 -> 28, not 29), and the count is the interpolation target.
    """
    return int(num_samples / sample_rate * fps)


@dataclass(frozen=True)
class Wav2VecConfig:
    """Shape of the audio encoder; the defaults are wav2vec2-base (chinese-wav2vec2-base's geometry).

    Field names are transformers' `Wav2Vec2Config` names, so a checkpoint's config.json maps directly.
    """

    conv_dim: tuple[int, ...] = (512,) * 7
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = False
    feat_extract_norm: str = "group"
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    layer_norm_eps: float = 1e-5
    do_stable_layer_norm: bool = False
    # > 0 gives the model a `masked_spec_embed` parameter; the checkpoint has one, inference never uses it.
    mask_time_prob: float = 0.05

    @classmethod
    def tiny(cls) -> Wav2VecConfig:
        """The same 320-sample hop (50 Hz) with narrow layers."""
        return cls(
            conv_dim=(16,) * 7,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=4,
        )

    def __post_init__(self) -> None:
        if self.do_stable_layer_norm:
            raise ValueError("only wav2vec2's post-LN layout (do_stable_layer_norm=false, base models) is supported")

    @classmethod
    def from_hf_config(cls, values: dict[str, Any]) -> Wav2VecConfig:
        """From a checkpoint's config.json; keys it does not set keep wav2vec2-base's values."""
        known = {field.name for field in fields(cls)}
        picked = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known}
        return cls(**picked)


class Wav2VecAudioEncoder(nn.Module):
    """Normalised 16 kHz waveform -> per-video-frame features of every transformer layer."""

    def __init__(self, config: Wav2VecConfig) -> None:
        super().__init__()
        self.config = config
        hf_config = Wav2Vec2Config(**asdict(config))
        self.model = Wav2Vec2Model(hf_config)

    def forward(self, input_values: torch.Tensor, num_frames: int) -> torch.Tensor:
        """[B, N] waveform (already through the feature extractor) -> [B, num_frames, layers, hidden]."""
        features = self.model.feature_extractor(input_values)  # [B, conv_dim, N_50Hz]
        features = F.interpolate(features, size=num_frames, mode="linear", align_corners=True)
        hidden, _ = self.model.feature_projection(features.transpose(1, 2))  # [B, num_frames, hidden]
        encoder = self.model.encoder  # post-LN layout: positions, LayerNorm, then the layers
        hidden = encoder.layer_norm(hidden + encoder.pos_conv_embed(hidden))
        outputs = []
        for layer in encoder.layers:  # MultiTalk keeps every layer's output, not the layers' input
            hidden = layer(hidden)
            outputs.append(hidden)
        return torch.stack(outputs, dim=2)
