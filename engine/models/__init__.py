"""Model definitions: pure compute, state-dict compatible with the published checkpoints."""

from engine.models.attention import attention, register_attention_backend
from engine.models.audio_proj import AudioProjConfig, AudioProjection
from engine.models.dit import DiTConditioning, DiTConfig, MultiTalkDiT, SequenceShard

__all__ = [
    "AudioProjConfig",
    "AudioProjection",
    "DiTConditioning",
    "DiTConfig",
    "MultiTalkDiT",
    "SequenceShard",
    "attention",
    "register_attention_backend",
]
