"""Mux stage: video frames + the mixed speech -> an MP4 that chat platforms play, and copies fitted to a byte budget.

The file is H.264 (yuv420p, what every player decodes) + AAC at 25 fps, with the index at the front (faststart,
so platforms can stream it before the download ends) and "AI-generated" in its comment and description tags.
Its duration is exactly `frames / 25` s: the audio is resampled to 48 kHz, cut or padded to the video's length
and time-stamped from 0, so that the encoder's priming samples go into an edit list instead of delaying the
speech or lengthening the file. Files are written under a temporary name and renamed into place.
"""

from __future__ import annotations

import fractions
import os
import queue
import shutil
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from storage.errors import DuetError

VIDEO_FPS = 25
AUDIO_RATE = 48000  # AAC frames of 1024 samples last 21 ms here, under one video frame
AI_NOTICE = "AI-generated video (Duet, MultiTalk model): the people shown did not say or do this."
DEFAULT_CRF = 20
DEFAULT_AUDIO_BITRATE = 128_000
# fit_to_bytes: share of the budget left for the container, audio bitrate bounds, and the least bits per pixel
# that still look like a face; below it the video is scaled down instead.
_CONTAINER_SHARE = 0.04
_CONTAINER_BYTES = 4096  # the index and headers of a short clip
_AUDIO_SHARE = 0.1
_AUDIO_BITRATE_RANGE = (24_000, 96_000)
_MIN_BITS_PER_PIXEL = 0.05
_MIN_SCALE = 0.25
_FIT_ATTEMPTS = 4


class FitError(DuetError):
    """The video cannot be made small enough for the platform's limit."""

    def __init__(self, detail: str) -> None:
        super().__init__("The video is too large to send here, even at a lower quality.", detail)


@dataclass(frozen=True)
class VideoInfo:
    """What a written MP4 holds, read back from the file."""

    path: Path
    duration_s: float
    width: int
    height: int
    fps: float
    num_frames: int
    has_audio: bool
    size_bytes: int
    tags: dict[str, str]


def probe(path: str | Path) -> VideoInfo:
    """Read an MP4's streams and tags back (PyAV; no decoding)."""
    path = Path(path)
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        return VideoInfo(
            path=path,
            duration_s=container.duration / av.time_base,
            width=video.codec_context.width,
            height=video.codec_context.height,
            fps=float(video.average_rate),
            num_frames=video.frames,
            has_audio=bool(container.streams.audio),
            size_bytes=path.stat().st_size,
            tags=dict(container.metadata),
        )


def fit_audio(audio: np.ndarray, sample_rate: int, num_frames: int, fps: int = VIDEO_FPS) -> np.ndarray:
    """Mono audio -> float32 at `AUDIO_RATE`, exactly `num_frames / fps` s long (cut, or padded with silence)."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio, dtype=np.float32)[None], format="flt", layout="mono")
    frame.sample_rate = sample_rate
    frame.pts, frame.time_base = 0, fractions.Fraction(1, sample_rate)
    pieces = [out.to_ndarray()[0] for out in [*resampler.resample(frame), *resampler.resample(None)]]
    resampled = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    length = num_frames * AUDIO_RATE // fps
    return np.pad(resampled[:length], (0, max(0, length - resampled.shape[0])))


def _video_frames(frames: np.ndarray, fps: int, first_index: int = 0) -> Iterator[av.VideoFrame]:
    for index, pixels in enumerate(frames, start=first_index):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
        frame.pts, frame.time_base = index, fractions.Fraction(1, fps)
        yield frame


def _write_mp4(
    path: Path,
    frames: Iterable[av.VideoFrame],
    audio: np.ndarray,
    *,
    size: tuple[int, int],
    fps: int,
    video_options: dict[str, str],
    video_bitrate: int | None,
    audio_bitrate: int,
) -> None:
    """Encode to a temporary file next to `path`, then rename it into place. `audio` is mono at AUDIO_RATE."""
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with av.open(str(temp), "w", format="mp4", options={"movflags": "+faststart"}) as container:
            container.metadata["comment"] = AI_NOTICE
            container.metadata["description"] = AI_NOTICE
            video = container.add_stream("libx264", rate=fps)
            video.height, video.width = size
            video.pix_fmt = "yuv420p"
            video.time_base = fractions.Fraction(1, fps)
            video.options = video_options
            video.thread_type = "FRAME"  # x264's frame threads: PyAV's default, slices, scales worse over many cores
            if video_bitrate is not None:
                video.bit_rate = video_bitrate
            sound = container.add_stream("aac", rate=AUDIO_RATE)
            sound.layout = "mono"
            sound.bit_rate = audio_bitrate
            for frame in frames:
                container.mux(video.encode(frame))
            container.mux(video.encode(None))
            # Time-stamped from 0: the encoder then gives its priming packet a negative time, which the muxer
            # turns into an edit list (no delay, no extra length).
            chunk = av.AudioFrame.from_ndarray(audio[None], format="flt", layout="mono")
            chunk.sample_rate = AUDIO_RATE
            chunk.pts, chunk.time_base = 0, fractions.Fraction(1, AUDIO_RATE)
            container.mux(sound.encode(chunk))
            container.mux(sound.encode(None))
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def mux_mp4(
    frames: np.ndarray,
    audio: np.ndarray,
    sample_rate: int,
    path: str | Path,
    *,
    fps: int = VIDEO_FPS,
    crf: int = DEFAULT_CRF,
    preset: str = "medium",
    audio_bitrate: int = DEFAULT_AUDIO_BITRATE,
) -> VideoInfo:
    """uint8 frames [F, H, W, 3] + mono audio -> the MP4 at `path`, `F / fps` s long; returns what was written.

    The same frames do not always give the same bytes (x264's output differs between its first encode in a
    process and later ones, and with threads); the frames, which the seed decides, are what is repeatable.
    """
    with Mp4Writer(
        path, audio, sample_rate, len(frames), fps=fps, crf=crf, preset=preset, audio_bitrate=audio_bitrate
    ) as writer:
        writer.add(frames)
        return writer.finish()


class Mp4Writer:
    """`mux_mp4` while the frames are still being made: `add` hands frames over as they come, a thread encodes them
    meanwhile, and `finish` adds the audio and returns the written MP4, so that little of x264's time is left once
    the last frame exists. `abort` (or leaving a `with` block on an exception) drops the file.

    The audio is known before the frames (speech comes first), and so is their number: `soundtrack` is fitted to
    `num_frames / fps` s up front, and `finish` refuses any other count.
    """

    def __init__(
        self,
        path: str | Path,
        soundtrack: np.ndarray,
        sample_rate: int,
        num_frames: int,
        *,
        fps: int = VIDEO_FPS,
        crf: int = DEFAULT_CRF,
        preset: str = "medium",
        audio_bitrate: int = DEFAULT_AUDIO_BITRATE,
    ) -> None:
        self.path = Path(path)
        self._audio = fit_audio(soundtrack, sample_rate, num_frames, fps)
        self._num_frames = num_frames
        self._fps = fps
        self._settings = {"crf": str(crf), "preset": preset}
        self._audio_bitrate = audio_bitrate
        self._pieces: queue.SimpleQueue[np.ndarray | None] = queue.SimpleQueue()
        self._added = 0  # frames handed over
        self._written = 0  # frames given to the encoder
        self._aborted = False
        self._closed = False  # by finish or abort: no more frames
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None  # started by the first frames, which give the size

    def add(self, frames: np.ndarray) -> None:
        """uint8 frames [n, H, W, 3], the next ones of the video (kept, not copied: do not change them after)."""
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"expected uint8 frames [n, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
        if self._closed:
            raise RuntimeError(f"{self.path.name} is already finished or aborted")
        if self._thread is None:
            self._thread = threading.Thread(target=self._encode, args=(frames.shape[1:3],), name="mp4-writer")
            self._thread.start()
        self._added += frames.shape[0]
        self._pieces.put(frames)

    def finish(self) -> VideoInfo:
        """Wait for the encoder, add the audio, move the file into place; what was written."""
        if self._added != self._num_frames:
            self.abort()
            raise ValueError(f"the MP4 was announced with {self._num_frames} frames and got {self._added}")
        self._join()
        if self._error is not None:
            raise self._error
        return probe(self.path)

    def abort(self) -> None:
        """Stop encoding and leave no file behind."""
        self._aborted = True
        self._join()

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is not None:
            self.abort()

    def _join(self) -> None:
        self._closed = True
        if self._thread is not None:
            self._pieces.put(None)
            self._thread.join()
            self._thread = None

    def _frames(self) -> Iterator[av.VideoFrame]:
        while (frames := self._pieces.get()) is not None:
            yield from _video_frames(frames, self._fps, first_index=self._written)
            self._written += frames.shape[0]
        if self._aborted:
            raise _Aborted  # through _write_mp4, which removes its temporary file

    def _encode(self, size: tuple[int, int]) -> None:
        try:
            _write_mp4(
                self.path, self._frames(), self._audio, size=size, fps=self._fps, video_options=self._settings,
                video_bitrate=None, audio_bitrate=self._audio_bitrate,
            )  # fmt: skip
        except _Aborted:
            pass
        except BaseException as error:  # handed to finish(); frames added after it are dropped with the writer
            self._error = error


class _Aborted(Exception):
    """Ends an aborted `Mp4Writer`'s frames."""


def _decoded_audio(source: Path, length: int) -> np.ndarray:
    """The source's audio track as mono float32 at AUDIO_RATE, `length` samples."""
    with av.open(str(source)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE)
        pieces = [
            out.to_ndarray()[0]
            for frame in container.decode(container.streams.audio[0])
            for out in resampler.resample(frame)
        ]
        pieces += [out.to_ndarray()[0] for out in resampler.resample(None)]
    audio = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    return np.pad(audio[:length], (0, max(0, length - audio.shape[0])))


def _scaled_frames(source: Path, size: tuple[int, int], fps: int) -> Iterator[av.VideoFrame]:
    with av.open(str(source)) as container:
        for index, frame in enumerate(container.decode(container.streams.video[0])):
            scaled = frame.reformat(width=size[1], height=size[0], format="yuv420p")
            scaled.pts, scaled.time_base = index, fractions.Fraction(1, fps)
            yield scaled


def _fitted_size(info: VideoInfo, video_bps: float) -> tuple[int, int]:
    """The frame size for a video bitrate: scaled down (even sides, aspect kept) when bits per pixel run short."""
    bits_per_pixel = video_bps / (info.width * info.height * info.fps)
    scale = min(1.0, max(_MIN_SCALE, (bits_per_pixel / _MIN_BITS_PER_PIXEL) ** 0.5))
    return max(16, round(info.height * scale / 2) * 2), max(16, round(info.width * scale / 2) * 2)


def fit_to_bytes(source: str | Path, budget_bytes: int, target: str | Path | None = None) -> VideoInfo:
    """A copy of the MP4 `source` that is at most `budget_bytes` long, at `target` (default: `<stem>_fitted.mp4`).

    A file already within budget is copied as is. Otherwise it is re-encoded at the average bitrate the budget
    allows (audio takes a tenth, within 24-96 kbit/s), scaled down when that leaves too few bits per pixel, and
    re-encoded at a lower rate if the encoder overshot. Duration, frame count, audio and tags are kept.
    """
    source = Path(source)
    target = Path(target) if target is not None else source.with_name(f"{source.stem}_fitted.mp4")
    info = probe(source)
    if info.size_bytes <= budget_bytes:
        shutil.copyfile(source, target)
        return probe(target)
    total_bps = (budget_bytes * (1 - _CONTAINER_SHARE) - _CONTAINER_BYTES) * 8 / info.duration_s
    audio_bps = int(min(max(total_bps * _AUDIO_SHARE, _AUDIO_BITRATE_RANGE[0]), _AUDIO_BITRATE_RANGE[1]))
    video_bps = total_bps - audio_bps
    if video_bps <= 0:
        raise FitError(f"{budget_bytes} bytes leave no room for video in {info.duration_s:.1f} s")
    fps = round(info.fps)
    audio = _decoded_audio(source, info.num_frames * AUDIO_RATE // fps)
    for _ in range(_FIT_ATTEMPTS):
        size = _fitted_size(info, video_bps)
        _write_mp4(
            target, _scaled_frames(source, size, fps), audio, size=size, fps=fps,
            video_options={"preset": "medium", "maxrate": str(int(video_bps)), "bufsize": str(int(2 * video_bps))},
            video_bitrate=int(video_bps), audio_bitrate=audio_bps,
        )  # fmt: skip
        written = target.stat().st_size
        if written <= budget_bytes:
            return probe(target)
        video_bps *= 0.9 * budget_bytes / written  # the encoder overshot: ask for less (and a smaller frame)
    target.unlink(missing_ok=True)
    raise FitError(f"{source} is still {written} bytes after {_FIT_ATTEMPTS} attempts for a {budget_bytes}-byte budget")
