"""Re-encode an MP4 to fit a byte budget (a chat's upload limit), with PyAV. Bot side, no torch.

The engine may already have written a fitted copy (`result_fitted`); this is the fallback for a platform
whose limit it did not know (a Discord guild without boosts: 10 MiB). The video bitrate is what the
budget leaves after the audio, spread over the duration; when that is too low for the frame size, the
frame is scaled down with it. An output that still overshoots (rate control is approximate) is tried
again at a lower bitrate; after a few tries the caller falls back to a download link.
"""

from __future__ import annotations

import asyncio
import math
import tempfile
from fractions import Fraction
from pathlib import Path

import av

AUDIO_BITRATE = 64_000
CONTAINER_MARGIN = 0.92  # MP4 boxes, and x264's rate control overshoots by a few percent
BITS_PER_PIXEL_FLOOR = 0.04  # below this per pixel per frame, a smaller frame looks better
MIN_SIDE = 128
MIN_VIDEO_BITRATE = 20_000  # below this x264 refuses to open; nothing watchable is left anyway


def _plan(width: int, height: int, fps: float, video_bitrate: float) -> tuple[int, int]:
    """The frame size to encode at: scaled down (even sides, aspect kept) when bits per pixel run out."""
    bits_per_pixel = video_bitrate / max(1.0, width * height * fps)
    scale = min(1.0, math.sqrt(bits_per_pixel / BITS_PER_PIXEL_FLOOR))
    scale = max(scale, MIN_SIDE / max(1, min(width, height)))
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


def _encode(source: Path, target: Path, video_bitrate: int) -> None:
    with av.open(str(source)) as reader, av.open(str(target), "w", format="mp4", options={"movflags": "+faststart"}) as writer:
        in_video = reader.streams.video[0]
        in_audio = reader.streams.audio[0] if reader.streams.audio else None
        fps = in_video.average_rate or Fraction(25)
        width, height = _plan(in_video.width, in_video.height, float(fps), video_bitrate)
        out_video = writer.add_stream("libx264", rate=fps)
        out_video.width, out_video.height, out_video.pix_fmt = width, height, "yuv420p"
        out_video.bit_rate = video_bitrate
        out_video.options = {"preset": "veryfast", "maxrate": str(int(video_bitrate * 1.2)), "bufsize": str(video_bitrate)}
        out_audio = resampler = None
        if in_audio is not None:
            out_audio = writer.add_stream("aac", rate=in_audio.rate or 24_000)
            out_audio.bit_rate = AUDIO_BITRATE
            resampler = av.AudioResampler(format="fltp", layout=out_audio.layout, rate=out_audio.rate, frame_size=1024)
        streams = [s for s in (in_video, in_audio) if s is not None]
        for frame in reader.decode(*streams):
            if isinstance(frame, av.VideoFrame):
                scaled = frame.reformat(width=width, height=height, format="yuv420p")
                scaled.pts = None
                writer.mux(out_video.encode(scaled))
            else:
                for chunk in resampler.resample(frame):
                    chunk.pts = None
                    writer.mux(out_audio.encode(chunk))
        if resampler is not None:
            for chunk in resampler.resample(None):
                chunk.pts = None
                writer.mux(out_audio.encode(chunk))
            writer.mux(out_audio.encode(None))
        writer.mux(out_video.encode(None))


def fit_to_bytes(source: Path, max_bytes: int, duration_s: float, *, attempts: int = 3) -> bytes | None:
    """An MP4 of `source` no larger than `max_bytes`, or None when even the smallest try is too big."""
    duration_s = max(duration_s, 0.5)
    bitrate = max(MIN_VIDEO_BITRATE, max_bytes * 8 * CONTAINER_MARGIN / duration_s - AUDIO_BITRATE)
    with tempfile.TemporaryDirectory(prefix="duet-fit-") as scratch:
        target = Path(scratch) / "fitted.mp4"
        for _ in range(attempts):
            _encode(source, target, int(bitrate))
            data = target.read_bytes()
            if len(data) <= max_bytes:
                return data
            if bitrate <= MIN_VIDEO_BITRATE:
                break
            bitrate = max(MIN_VIDEO_BITRATE, bitrate * 0.7 * max_bytes / len(data))
    return None


class VideoFitter:
    """What the delivery watcher calls; runs the blocking encode in a thread."""

    async def fit(self, source: Path, max_bytes: int, *, duration_s: float) -> bytes | None:
        return await asyncio.to_thread(fit_to_bytes, source, max_bytes, duration_s)
