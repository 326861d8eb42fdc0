"""The model's output sizes ("size buckets"), shared by the bots that compose frames and the engine that renders.

Frames are composed at exactly a bucket's size, so the engine's resize-and-crop is the identity and the preview
shows the very pixels that will be rendered (spec §1.3).
"""

from __future__ import annotations

from dataclasses import dataclass

# The model's size buckets, `{height / width: (height, width)}`, in the reference's order (which
# decides ties): multitalk-480 is ASPECT_RATIO_627, multitalk-720 is ASPECT_RATIO_960.
SIZE_BUCKETS: dict[str, dict[float, tuple[int, int]]] = {
    "480p": {
        0.26: (320, 1216), 0.38: (384, 1024), 0.50: (448, 896), 0.67: (512, 768),
        0.82: (576, 704), 1.00: (640, 640), 1.22: (704, 576), 1.50: (768, 512),
        1.86: (832, 448), 2.00: (896, 448), 2.50: (960, 384), 2.83: (1088, 384),
        3.60: (1152, 320), 3.80: (1216, 320), 4.00: (1280, 320),
    },
    "720p": {
        0.22: (448, 2048), 0.29: (512, 1792), 0.36: (576, 1600), 0.45: (640, 1408),
        0.55: (704, 1280), 0.63: (768, 1216), 0.76: (832, 1088), 0.88: (896, 1024),
        1.00: (960, 960), 1.14: (1024, 896), 1.31: (1088, 832), 1.50: (1152, 768),
        1.58: (1216, 768), 1.82: (1280, 704), 1.91: (1344, 704), 2.20: (1408, 640),
        2.30: (1472, 640), 2.67: (1536, 576), 2.89: (1664, 576), 3.62: (1856, 512),
        3.75: (1920, 512),
    },
}


@dataclass(frozen=True)
class SizeBucket:
    """One output size of the model: `quality` "480p" | "720p", `aspect` = the model's h/w key."""

    quality: str
    aspect: float
    height: int
    width: int


def choose_bucket(quality: str = "720p", aspect: float = 1.0) -> SizeBucket:
    """The bucket of `quality` whose key is closest to `aspect` (height / width; ties: first listed)."""
    if quality not in SIZE_BUCKETS:
        raise ValueError(f"quality must be one of {sorted(SIZE_BUCKETS)}, not {quality!r}")
    key = min(SIZE_BUCKETS[quality], key=lambda candidate: abs(candidate - aspect))
    height, width = SIZE_BUCKETS[quality][key]
    return SizeBucket(quality=quality, aspect=key, height=height, width=width)
