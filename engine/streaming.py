"""Long-video chaining of MultiTalk (spec §6) without the models: chunk plan, audio windows, trim, colour fix.

A long dialogue is rendered as 81-frame chunks that overlap by 25 "motion" frames: chunk c covers
video/audio frames [56c, 56c + 81), later chunks are conditioned on the last 25 decoded frames of the
previous one and contribute their 56 new frames. This module decides the chunks and the end-of-audio
padding up front (`plan_chunks`), cuts each chunk's audio windows (`chunk_audio`), trims the
concatenated video to the audio (`trim_to_audio`) and corrects colour drift (`match_colors`). The
render stage runs the models in between; nothing here touches a model, a file or the RNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from storage.errors import DuetError

FRAMES_PER_CHUNK = 81  # pixel frames per chunk (4n + 1 for the VAE's 4x temporal stride)
MOTION_FRAMES = 25  # frames of the previous chunk that condition the next one
MAX_STREAMING_FRAMES = 1000  # the reference's cap in streaming mode (40 s at 25 fps)
AUDIO_WINDOW = 5  # audio rows per video frame: offsets -2..+2 around it
# Rows appended past the end of the track beyond the last chunk's end (the reference's `+ 3`).
_END_PAD_EXTRA = 3


class AudioTooShort(DuetError):
    """The reference needs more audio rows than one chunk has frames (> 81 rows, about 3.3 s)."""

    def __init__(self, rows: int, needed: int) -> None:
        super().__init__(
            "The dialogue is too short to animate: it needs at least 3.3 seconds of speech.",
            f"audio track has {rows} rows at 25 fps; more than {needed} are required",
        )


@dataclass(frozen=True)
class Chunk:
    """One model run: video/audio frames [start, start + frame_num)."""

    index: int
    start: int
    frame_num: int
    num_cond_frames: int  # 1 (the reference image) for chunk 0, else the motion frames
    is_last: bool

    @property
    def num_motion_latents(self) -> int:
        """Latent frames that encode the conditioning frames (VAE: 1 + 4k pixel frames -> 1 + k)."""
        return 1 + (self.num_cond_frames - 1) // 4

    @property
    def new_frames(self) -> slice:
        """The decoded frames this chunk adds to the video (later chunks repeat their motion frames)."""
        return slice(0 if self.index == 0 else self.num_cond_frames, None)


@dataclass(frozen=True)
class ChunkPlan:
    """Every chunk of a render, the audio padding before the last one, and the final frame count."""

    chunks: tuple[Chunk, ...]
    pad_rows: tuple[int, ...]  # per speaker track: mirrored rows appended before the last chunk
    motion_frames: int
    generated_frames: int  # frames in the concatenation of every chunk's new frames
    num_frames: int  # frames left after `trim_to_audio`


def plan_chunks(
    track_rows: Sequence[int],
    *,
    max_frames: int = MAX_STREAMING_FRAMES,
    frame_num: int = FRAMES_PER_CHUNK,
    motion_frames: int = MOTION_FRAMES,
) -> ChunkPlan:
    """Plan a render over speaker tracks of `track_rows` audio rows (25 fps) each, as the reference.

    `max_frames <= frame_num` is the reference's clip mode (one chunk, exactly `frame_num` frames);
    otherwise streaming: chunks follow until one ends at or past min(max_frames, rows of speaker 1),
    that last chunk's audio is padded by mirroring each track's tail (`end - rows + 3` rows where the
    track ends by `end`), and the video is cut to `max_frames` then shortened by speaker 1's padding,
    leaving `rows - 3` frames for tracks of up to 977 rows (spec §6.4).
    """
    if frame_num < 5 or (frame_num - 1) % 4:
        raise ValueError(f"frame_num must be 4n+1 (n >= 1), got {frame_num}")
    if not 1 <= motion_frames < frame_num or (motion_frames - 1) % 4:
        raise ValueError(f"motion_frames must be 4n+1 and below frame_num, got {motion_frames}")
    if not track_rows:
        raise ValueError("at least one speaker track is needed")
    for rows in track_rows:
        if rows <= frame_num:
            raise AudioTooShort(rows, frame_num)

    stride = frame_num - motion_frames
    chunks = [Chunk(0, 0, frame_num, 1, is_last=max_frames <= frame_num)]
    pad_rows = (0,) * len(track_rows)
    while not chunks[-1].is_last:
        start = chunks[-1].start + stride
        end = start + frame_num
        # The reference looks at speaker 1 alone to stop; padding is per track.
        is_last = end >= min(max_frames, track_rows[0])
        if is_last:
            pad_rows = tuple(end - rows + _END_PAD_EXTRA if end >= rows else 0 for rows in track_rows)
        chunks.append(Chunk(len(chunks), start, frame_num, motion_frames, is_last))

    generated = frame_num + stride * (len(chunks) - 1)
    num_frames = min(generated, max_frames)
    if max_frames > frame_num:
        # Cut first, then drop speaker 1's padded frames (the reference's order). The reference also
        # returns an empty video when only another speaker was padded; we just do not trim then.
        num_frames -= pad_rows[0]
    return ChunkPlan(tuple(chunks), pad_rows, motion_frames, generated, num_frames)


def pad_track(track: torch.Tensor, rows: int) -> torch.Tensor:
    """Append the last `rows` rows in reverse: ..., r[n-2], r[n-1] | r[n-1], r[n-2], ..."""
    if rows <= 0:
        return track
    return torch.cat([track, track[-rows:].flip(0)], dim=0)


def chunk_audio(tracks: Sequence[torch.Tensor], chunk: Chunk, plan: ChunkPlan) -> torch.Tensor:
    """Audio windows of one chunk: [n_rows, ...] per speaker -> [P, frame_num, AUDIO_WINDOW, ...].

    Row `start + i + o` for o in -2..2, clamped to the track (edge replication). The last chunk reads
    the padded tracks, earlier ones the original tracks, exactly like the reference.
    """
    if len(tracks) != len(plan.pad_rows):
        raise ValueError(f"the plan has {len(plan.pad_rows)} speaker track(s), got {len(tracks)}")
    half = AUDIO_WINDOW // 2
    frames = torch.arange(chunk.start, chunk.start + chunk.frame_num)
    offsets = torch.arange(-half, half + 1)
    index = frames[:, None] + offsets[None, :]  # [frame_num, AUDIO_WINDOW]
    windows = []
    for track, pad in zip(tracks, plan.pad_rows):
        if chunk.is_last:
            track = pad_track(track, pad)
        windows.append(track[index.clamp(0, track.shape[0] - 1).to(track.device)])
    return torch.stack(windows)


def trim_to_audio(video: torch.Tensor, plan: ChunkPlan) -> torch.Tensor:
    """The concatenated new frames [C, generated_frames, H, W] cut to the planned length."""
    if video.shape[1] != plan.generated_frames:
        raise ValueError(f"expected {plan.generated_frames} generated frames, got {video.shape[1]}")
    return video[:, : plan.num_frames]


# --- colour-drift correction (spec §6.5): Lab statistics matched to the reference image -----------
# sRGB (D65) <-> CIE XYZ as scikit-image defines them, which the reference uses; the inverse is
# computed once in float64 and rounded, as scikit-image does before its float32 matmul.
_XYZ_FROM_RGB = np.array(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)
_RGB_FROM_XYZ = np.linalg.inv(_XYZ_FROM_RGB)
_D65_WHITE = (0.95047, 1.0, 1.08883)


def _rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """[..., 3] sRGB in [0, 1] -> [..., 3] CIE-Lab (L in [0, 100])."""
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = linear @ torch.as_tensor(_XYZ_FROM_RGB.T, dtype=rgb.dtype, device=rgb.device)
    xyz = xyz / torch.tensor(_D65_WHITE, dtype=rgb.dtype, device=rgb.device)
    f = torch.where(xyz > 0.008856, xyz.clamp(min=0) ** (1 / 3), 7.787 * xyz + 16.0 / 116.0)
    fx, fy, fz = f.unbind(-1)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=-1)


def _lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """[..., 3] CIE-Lab -> [..., 3] sRGB clipped to [0, 1] (negative Z clipped first, as scikit-image)."""
    lightness, a, b = lab.unbind(-1)
    fy = (lightness + 16.0) / 116.0
    f = torch.stack([a / 500.0 + fy, fy, (fy - b / 200.0).clamp(min=0)], dim=-1)
    xyz = torch.where(f > 0.2068966, f**3, (f - 16.0 / 116.0) / 7.787)
    xyz = xyz * torch.tensor(_D65_WHITE, dtype=lab.dtype, device=lab.device)
    linear = xyz @ torch.as_tensor(_RGB_FROM_XYZ.T, dtype=lab.dtype, device=lab.device)
    rgb = torch.where(linear > 0.0031308, 1.055 * linear.clamp(min=0) ** (1 / 2.4) - 0.055, linear * 12.92)
    return rgb.clamp(0.0, 1.0)


def match_colors(
    frames: torch.Tensor, reference: torch.Tensor, strength: float = 1.0, frames_per_batch: int = 16
) -> torch.Tensor:
    """Pull each frame's Lab mean/std to the reference image's, blended by `strength` in [0, 1].

    frames [3, T, H, W] and reference [3, H, W], both in [-1, 1]; returns [3, T, H, W] float32 in
    [-1, 1]. Applied to every decoded chunk before its tail conditions the next one, so it steers the
    video, not just the output. Any strength > 0 clips every pixel to [-1, 1] (the reference blends
    with the clipped frame). A flat frame channel (std 0) is set to the reference mean. Frames are
    processed `frames_per_batch` at a time to bound the memory of the Lab intermediates.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"colour correction strength must be in [0, 1], got {strength}")
    if strength == 0.0:
        return frames
    ref_lab = _rgb_to_lab(((reference.float() + 1.0) / 2.0).clamp(0.0, 1.0).permute(1, 2, 0)).flatten(0, 1)
    ref_mean, ref_std = ref_lab.mean(dim=0), ref_lab.std(dim=0, correction=0)  # [3]
    out = torch.empty(frames.shape, dtype=torch.float32, device=frames.device)
    for first in range(0, frames.shape[1], frames_per_batch):
        batch = frames[:, first : first + frames_per_batch].float()
        source = ((batch + 1.0) / 2.0).clamp(0.0, 1.0).permute(1, 2, 3, 0)  # [t, H, W, 3]
        lab = _rgb_to_lab(source)
        mean = lab.mean(dim=(1, 2), keepdim=True)  # [t, 1, 1, 3]
        std = lab.std(dim=(1, 2), keepdim=True, correction=0)
        matched = (lab - mean) * (ref_std / std) + ref_mean
        matched = torch.where(std == 0, ref_mean.expand_as(lab), matched)
        blended = (1 - strength) * source + strength * _lab_to_rgb(matched)
        out[:, first : first + frames_per_batch] = (blended * 2.0 - 1.0).permute(3, 0, 1, 2)
    return out
