"""Audio features stage: each speaker's 16 kHz track -> wav2vec2 features at 25 fps (spec §2.3).

Owns two decisions: how long the video is (one frame per 1/25 s of speech, rounded) and how much trailing
silence the tracks get so that the reference's chunk plan covers that many frames. The reference drops the
last 3 frames of every streaming render (its end-of-audio padding, spec §6.4) and refuses tracks of up to
81 rows; padding the tracks with silence instead lets any dialogue render at its own length, the video being
cut to the speech afterwards. The per-chunk windows and the mirrored end padding are `engine.streaming`'s.
No file I/O: the tracks arrive as arrays from the speech stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from engine.models.wav2vec import SAMPLE_RATE, VIDEO_FPS, Wav2VecAudioEncoder, video_frame_count

# Rows the reference's streaming trim removes beyond the last audio row (its mirrored `+ 3`).
END_TRIM_ROWS = 3


@dataclass(frozen=True)
class AudioFeatures:
    """wav2vec2 features of every speaker track, speaker A first, and the video length they drive."""

    tracks: tuple[torch.Tensor, ...]  # each [rows, layers, channels] fp32; rows > frame_num
    num_frames: int  # video frames to keep: the speech's length at 25 fps

    @property
    def rows(self) -> tuple[int, ...]:
        return tuple(track.shape[0] for track in self.tracks)


def target_frame_count(duration_s: float, fps: int = VIDEO_FPS) -> int:
    """Video frames for `duration_s` seconds of speech: the nearest whole frame, at least one."""
    return max(1, round(duration_s * fps))


def padded_length(num_samples: int, num_frames: int, frame_num: int, sample_rate: int = SAMPLE_RATE) -> int:
    """Samples a track needs so that the chunk plan yields at least `num_frames` frames.

    The plan keeps `rows - 3` frames and needs more rows than one chunk has frames; half a frame of margin keeps
    `video_frame_count`'s float expression from rounding a whole-frame length down.
    """
    rows = max(num_frames + END_TRIM_ROWS, frame_num + 1)
    samples_per_frame = sample_rate / VIDEO_FPS
    return max(num_samples, int(np.ceil((rows + 0.5) * samples_per_frame)))


def pad_tracks(tracks: Sequence[np.ndarray], length: int) -> list[np.ndarray]:
    """Trailing silence up to `length` samples (float32); a longer track is an error, not cut."""
    padded = []
    for track in tracks:
        if track.ndim != 1 or track.shape[0] > length:
            raise ValueError(f"expected mono tracks of at most {length} samples, got shape {track.shape}")
        padded.append(np.pad(track.astype(np.float32, copy=False), (0, length - track.shape[0])))
    return padded


@torch.inference_mode()
def encode_tracks(
    tracks: Sequence[np.ndarray],
    encoder: Wav2VecAudioEncoder,
    preprocessor: Any,
    *,
    num_frames: int,
    frame_num: int,
    sample_rate: int = SAMPLE_RATE,
) -> AudioFeatures:
    """Speaker tracks (mono float arrays at 16 kHz, equal or not in length) -> `AudioFeatures`.

    Every track is padded with silence to one common length (see `padded_length`), standardised by the
    checkpoint's feature extractor as one utterance, and encoded in one batch: the transformer runs at 25 fps
    and every layer's output is kept, `[rows, layers, channels]` per track.
    """
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"wav2vec2 takes {SAMPLE_RATE} Hz audio, got {sample_rate} Hz")
    length = padded_length(max(track.shape[0] for track in tracks), num_frames, frame_num, sample_rate)
    padded = pad_tracks(tracks, length)
    values = preprocessor(padded, sampling_rate=sample_rate, return_tensors="pt").input_values  # [P, N]
    parameter = next(encoder.parameters())
    features = encoder(values.to(device=parameter.device, dtype=parameter.dtype), video_frame_count(length))
    return AudioFeatures(tracks=tuple(features.float().unbind(0)), num_frames=num_frames)
