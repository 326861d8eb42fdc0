"""Model definitions: pure compute, state-dict compatible with the published checkpoints."""

from engine.models.attention import attention, register_attention_backend
from engine.models.audio_proj import AudioProjConfig, AudioProjection
from engine.models.dit import DiTConditioning, DiTConfig, MultiTalkDiT

__all__ = [
    "AudioProjConfig",
    "AudioProjection",
    "DiTConditioning",
    "DiTConfig",
    "MultiTalkDiT",
    "attention",
    "register_attention_backend",
]
