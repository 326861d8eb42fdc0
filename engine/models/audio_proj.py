"""MultiTalk's audio projection: wav2vec2 feature windows -> per-latent-frame audio context tokens.

Owns the in-model regrouping of 25 fps audio windows onto latent frames (spec §2.5) and the MLP that turns each
latent frame's window into `context_tokens` tokens (spec §2.6). Pure compute: the caller slices the per-chunk windows
(spec §2.4) and the DiT packs speakers along the token axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class AudioProjConfig:
    """Defaults are the published MultiTalk checkpoint (chinese-wav2vec2-base features, 4x VAE time stride)."""

    window: int = 5  # wav2vec2 rows around each video frame: offsets -2..+2
    vae_time_stride: int = 4  # video frames per later latent frame
    feature_layers: int = 12  # wav2vec2 hidden states stacked per row
    feature_dim: int = 768
    hidden_dim: int = 512
    context_tokens: int = 32  # audio tokens per speaker and latent frame
    output_dim: int = 768

    @property
    def later_window(self) -> int:
        """Rows a later latent frame sees: the contiguous span its 4 video frames' windows cover (8 by default)."""
        return self.window + self.vae_time_stride - 1

    @classmethod
    def tiny(cls) -> AudioProjConfig:
        return cls(feature_layers=2, feature_dim=32, hidden_dim=32, context_tokens=4, output_dim=32)


def group_audio_by_latent_frame(
    audio: torch.Tensor, window: int, vae_time_stride: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Regroup per-video-frame windows onto latent frames.

    The first latent frame holds video frame 0 alone and keeps its whole window. Each later latent frame covers
    `vae_time_stride` video frames: it takes the past half (up to the centre) of its first frame's window, the centre
    row of the frames in between and the future half of its last frame's window, which together are the contiguous
    rows around those frames without repeats.

    audio: [P, F, window, layers, C] with F = 1 + vae_time_stride * n.
    Returns (first [P, 1, window, layers, C], later [P, n, window + vae_time_stride - 1, layers, C]).
    """
    speakers, frames = audio.shape[:2]
    if (frames - 1) % vae_time_stride:
        raise ValueError(f"audio covers {frames} video frames; expected 1 + {vae_time_stride}·n")
    centre = window // 2
    first = audio[:, :1]
    later = audio[:, 1:].unflatten(1, ((frames - 1) // vae_time_stride, vae_time_stride))  # [P, n, 4, W, layers, C]
    past = later[:, :, 0, : centre + 1]
    middle = later[:, :, 1:-1, centre]
    future = later[:, :, -1, centre:]
    return first, torch.cat([past, middle, future], dim=2)


class AudioProjection(nn.Module):
    """Per latent frame: flatten (window, layer, channel) -> ReLU MLP -> `context_tokens` LayerNorm'd tokens.

    The first latent frame has its own input layer (`proj1`, 5 rows) because it sees fewer rows than the later
    frames (`proj1_vf`, 8 rows); both share the rest of the MLP. Parameter names follow the reference checkpoint.
    """

    def __init__(self, config: AudioProjConfig) -> None:
        super().__init__()
        self.config = config
        row_dim = config.feature_layers * config.feature_dim
        self.proj1 = nn.Linear(config.window * row_dim, config.hidden_dim)
        self.proj1_vf = nn.Linear(config.later_window * row_dim, config.hidden_dim)
        self.proj2 = nn.Linear(config.hidden_dim, config.hidden_dim)
        self.proj3 = nn.Linear(config.hidden_dim, config.context_tokens * config.output_dim)
        self.norm = nn.LayerNorm(config.output_dim)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """audio: [P, F, window, layers, C] per-video-frame windows -> [P, T, context_tokens, output_dim]."""
        first, later = group_audio_by_latent_frame(audio, self.config.window, self.config.vae_time_stride)
        first = torch.relu(self.proj1(first.flatten(2)))  # [P, 1, hidden]
        later = torch.relu(self.proj1_vf(later.flatten(2)))  # [P, n, hidden]
        hidden = torch.relu(self.proj2(torch.cat([first, later], dim=1)))
        tokens = self.proj3(hidden).unflatten(-1, (self.config.context_tokens, self.config.output_dim))
        return self.norm(tokens)
