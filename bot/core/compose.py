"""Two photos → the one reference frame MultiTalk renders, and the box of each person in it.

Photo A's person stands in the left half, photo B's in the right half; each is cropped around
their face (found with OpenCV's Haar cascades, which ship inside opencv-python-headless < 5),
scaled so that head and shoulders fill the half, and the halves meet in a soft seam. Because we
place each person ourselves, we know their boxes exactly; the engine binds each voice to its box
(region masks, `reference/multitalk-spec.md` §3.8) instead of guessing halves.

The frame is composed at exactly the size of one of the model's buckets (§1.3), so the engine's
resize-and-crop is the identity and the preview shows the very pixels that will be rendered.
CPU only and blocking: the bots call `compose_photos` through `asyncio.to_thread`. No torch.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from bot.core.photos import Photo, PhotoError, PhotoLimits, load_photo, png_bytes
from storage.buckets import SIZE_BUCKETS as BUCKETS
from storage.buckets import SizeBucket, choose_bucket

@dataclass(frozen=True)
class Box:
    """A rectangle in pixels, `x1`/`y1` exclusive, x to the right and y down.

    Note for the engine: the reference's `bbox` lists rows first (`[y0, x0, y1, x1]`, §3.8).
    """

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def center(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2

    def contains(self, other: Box) -> bool:
        return (
            self.x0 <= other.x0 and self.y0 <= other.y0 and other.x1 <= self.x1 and other.y1 <= self.y1
        )

    def as_tuple(self) -> tuple[int, int, int, int]:
        return self.x0, self.y0, self.x1, self.y1


@dataclass(frozen=True)
class ComposeConfig:
    """How people are found and framed. Lengths "in faces" are multiples of the face box's width."""

    detect_long_side: int = 640  # detection runs on this downscale: ~0.15 s a photo on one core
    min_face_px: int = 64  # a smaller face, upscaled to fill its half, is too blurry to animate
    rival_face_ratio: float = 0.6  # a second face at least this wide (vs the largest) is ambiguous
    half_width_in_faces: float = 2.8  # head and shoulders span about this many face widths
    frame_height_in_faces: float = 3.0  # in wide buckets the height limits the face instead
    face_center_y: float = 0.33  # where the face's centre sits, as a fraction of frame height
    max_face_fill: float = 0.67  # a face never grows wider than this fraction of its half
    border_px: int = 32  # kept free around each person's box: the engine needs background tokens
    seam_px: int = 32  # width of the cross-fade between the halves; 0 for a hard cut


@dataclass(frozen=True)
class Composition:
    """The reference frame and where each person is in it (frame pixels, A first)."""

    frame: Image.Image  # RGB, bucket.width × bucket.height
    bucket: SizeBucket
    person_boxes: tuple[Box, Box]  # head, shoulders and body: what each voice animates
    face_boxes: tuple[Box, Box]

    def png_bytes(self) -> bytes:
        return png_bytes(self.frame)


# ---- errors ----


class NoFaceError(PhotoError):
    key = "photo.no_face"
    templates = {
        "en": "No face was found in photo {photo}. Use a photo where the person looks at the camera, "
        "with the face large, well lit and not covered (no sunglasses or mask).",
        "zh": "在照片 {photo} 中没有找到人脸。请使用人物面向镜头、脸部较大、光线充足且没有遮挡（不戴墨镜或口罩）的照片。",
    }


class SeveralFacesError(PhotoError):
    key = "photo.several_faces"
    templates = {
        "en": "Photo {photo} shows {count} faces of similar size, so it is unclear who should speak. "
        "Crop it to one person, or use a photo of that person alone.",
        "zh": "照片 {photo} 中有 {count} 张大小相近的人脸，无法确定由谁说话。请裁剪到只剩一个人，或换一张这个人的单人照。",
    }


class FaceTooSmallError(PhotoError):
    key = "photo.face_too_small"
    templates = {
        "en": "The face in photo {photo} is only {size} pixels wide; it needs at least {minimum}. "
        "Use a closer or higher-resolution photo, or crop it around the person.",
        "zh": "照片 {photo} 中的人脸只有 {size} 像素宽，至少需要 {minimum} 像素。请使用更近或分辨率更高的照片，或裁剪到人物附近。",
    }


# ---- face detection ----

_CASCADE_FILES = ("haarcascade_frontalface_alt2.xml", "haarcascade_profileface.xml")
_cascades = threading.local()  # a CascadeClassifier must not be shared between threads


def _load_cascades() -> tuple[cv2.CascadeClassifier, cv2.CascadeClassifier]:
    if not hasattr(_cascades, "pair"):
        if not hasattr(cv2, "CascadeClassifier"):  # OpenCV 5 dropped the Haar cascades and their data
            raise RuntimeError(f"OpenCV {cv2.__version__} has no Haar cascades: install opencv-python-headless<5")
        loaded = tuple(cv2.CascadeClassifier(cv2.data.haarcascades + name) for name in _CASCADE_FILES)
        if any(cascade.empty() for cascade in loaded):
            raise RuntimeError(f"OpenCV's face cascades are missing from {cv2.data.haarcascades}")
        _cascades.pair = loaded
    return _cascades.pair


def detect_faces(image: Image.Image, config: ComposeConfig = ComposeConfig()) -> list[Box]:
    """Faces in `image` (its pixel coordinates), largest first: frontal ones, else profiles."""
    grey = np.asarray(image.convert("L"))
    scale = min(1.0, config.detect_long_side / max(grey.shape))
    if scale < 1.0:
        size = (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale)))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
    grey = cv2.equalizeHist(grey)
    # Faces down to half the usable size are still looked for, so that a small face is reported
    # as "too small" rather than "no face"; anything smaller is not worth the search time.
    min_side = max(20, round(0.5 * config.min_face_px * scale))
    frontal, profile = _load_cascades()
    found = _detect(frontal, grey, min_side)
    if not found:
        # The profile cascade knows one direction only; mirror the image for the other one.
        width = grey.shape[1]
        found = _detect(profile, grey, min_side) + [
            (width - x - w, y, w, h) for x, y, w, h in _detect(profile, cv2.flip(grey, 1), min_side)
        ]
    boxes = [
        Box(round(x / scale), round(y / scale), round((x + w) / scale), round((y + h) / scale))
        for x, y, w, h in found
    ]
    return _drop_duplicates(sorted(boxes, key=lambda box: box.width * box.height, reverse=True))


def _detect(
    cascade: cv2.CascadeClassifier, grey: np.ndarray, min_side: int
) -> list[tuple[int, int, int, int]]:
    found = cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side))
    return [tuple(int(v) for v in row) for row in np.asarray(found).reshape(-1, 4)]


def _drop_duplicates(boxes: list[Box]) -> list[Box]:
    """Keep a box only if its centre lies outside every larger box kept (one face, one box)."""
    kept: list[Box] = []
    for box in boxes:
        cx, cy = box.center
        if not any(k.x0 <= cx < k.x1 and k.y0 <= cy < k.y1 for k in kept):
            kept.append(box)
    return kept


def find_face(image: Image.Image, *, photo: str, config: ComposeConfig = ComposeConfig()) -> Box:
    """The one face to animate in photo `photo`, or a `PhotoError` saying why there is none.

    Smaller faces in the background are fine; a rival of similar size is not, because we could
    not tell which person the user means.
    """
    faces = detect_faces(image, config)
    if not faces:
        raise NoFaceError(photo=photo)
    main = faces[0]
    rivals = [face for face in faces[1:] if face.width >= config.rival_face_ratio * main.width]
    if rivals:
        raise SeveralFacesError(photo=photo, count=1 + len(rivals), admin_detail=repr(faces))
    if main.width < config.min_face_px:
        raise FaceTooSmallError(photo=photo, size=main.width, minimum=config.min_face_px)
    return main


@dataclass(frozen=True)
class Portrait:
    """A photo that passed every check, with the face that will be animated (photo pixels)."""

    photo: Photo
    face: Box


def prepare_portrait(
    data: bytes,
    *,
    photo: str,
    limits: PhotoLimits = PhotoLimits(),
    config: ComposeConfig = ComposeConfig(),
) -> Portrait:
    """Everything that can be refused about one photo, so a bot can answer as soon as it arrives."""
    decoded = load_photo(data, photo=photo, limits=limits)
    return Portrait(photo=decoded, face=find_face(decoded.image, photo=photo, config=config))


# ---- framing ----


@dataclass(frozen=True)
class _Placement:
    """Where a photo lands in a slot: slot pixel (X, Y) shows photo point (left + X/scale, top + Y/scale)."""

    scale: float  # frame pixels per photo pixel
    left: float
    top: float

    def to_frame(self, box: Box, slot_x0: int) -> tuple[float, float, float, float]:
        return (
            slot_x0 + (box.x0 - self.left) * self.scale,
            (box.y0 - self.top) * self.scale,
            slot_x0 + (box.x1 - self.left) * self.scale,
            (box.y1 - self.top) * self.scale,
        )

    def overhangs(self, photo_size: tuple[int, int], slot_size: tuple[int, int]) -> bool:
        """Whether the slot shows area beyond the photo's edges (which must then be filled)."""
        tolerance = 1e-6
        right = self.left + slot_size[0] / self.scale
        bottom = self.top + slot_size[1] / self.scale
        return (
            self.left < -tolerance
            or self.top < -tolerance
            or right > photo_size[0] + tolerance
            or bottom > photo_size[1] + tolerance
        )


def _clamp(value: float, low: float, high: float) -> float:
    """`value` limited to [low, high]; the middle of the two when rounding left the range empty."""
    if low > high:
        return (low + high) / 2
    return min(max(value, low), high)


def _place(face: Box, photo_size: tuple[int, int], half: Box, slot: Box, config: ComposeConfig) -> _Placement:
    """Scale and shift a photo so its face sits in `half` at a head-and-shoulders size.

    Preference order: the face at its target size and position; then zoom in (up to a limit) and
    slide so that the half stays inside the photo; the face never leaves its half, and whatever
    the photo cannot cover after that is filled by `_render`. Only the half is fitted: the seam's
    extra columns of the slot are cross-faded away, so they may overhang.
    """
    photo_w, photo_h = photo_size
    frame_h = half.height
    margin = max(config.border_px, config.seam_px // 2)
    headroom = 0.4 * face.width  # the face box stops at the brow; hair needs room above it

    target_face_w = min(half.width / config.half_width_in_faces, frame_h / config.frame_height_in_faces)
    covering_scale = max(half.width / photo_w, frame_h / photo_h)
    largest_scale = min(
        config.max_face_fill * half.width / face.width,
        (half.width - 2 * margin) / face.width,
        (frame_h - 2 * margin) / (face.height + headroom),
    )
    scale = min(max(target_face_w / face.width, covering_scale), largest_scale)

    # Photo coordinates of the half's left and top edges.
    face_cx, face_cy = face.center
    left = face_cx - half.width / 2 / scale
    top = face_cy - config.face_center_y * frame_h / scale
    if half.width / scale <= photo_w:  # else the target position stands and the rest is filled
        left = _clamp(left, 0.0, photo_w - half.width / scale)
    if frame_h / scale <= photo_h:
        top = _clamp(top, 0.0, photo_h - frame_h / scale)
    left = _clamp(left, face.x1 - (half.width - margin) / scale, face.x0 - margin / scale)
    top = _clamp(top, face.y1 - (frame_h - margin) / scale, face.y0 - headroom - margin / scale)
    return _Placement(scale=scale, left=left - (half.x0 - slot.x0) / scale, top=top)


def _render(photo: np.ndarray, placement: _Placement, slot_size: tuple[int, int]) -> np.ndarray:
    """The slot's pixels ([H, W, 3] uint8): the photo resampled, overhangs filled with a blur."""
    scale = placement.scale
    source, sx, sy = photo, 1.0, 1.0
    if scale < 1.0:
        # Area averaging first: a plain warp would alias when shrinking a large photo.
        size = (max(1, round(photo.shape[1] * scale)), max(1, round(photo.shape[0] * scale)))
        source = cv2.resize(photo, size, interpolation=cv2.INTER_AREA)
        sx, sy = size[0] / photo.shape[1], size[1] / photo.shape[0]
    # Slot pixel centre X + 0.5 shows photo point left + (X + 0.5) / scale, which is source index
    # (that point · sx) − 0.5 (pixel centres sit at half-integers).
    matrix = np.array(
        [
            [sx / scale, 0.0, (placement.left + 0.5 / scale) * sx - 0.5],
            [0.0, sy / scale, (placement.top + 0.5 / scale) * sy - 0.5],
        ]
    )
    interpolation = cv2.INTER_CUBIC if scale > 1.0 else cv2.INTER_LINEAR
    warp_flags = interpolation | cv2.WARP_INVERSE_MAP
    slot = cv2.warpAffine(source, matrix, slot_size, flags=warp_flags, borderMode=cv2.BORDER_REPLICATE)
    if not placement.overhangs((photo.shape[1], photo.shape[0]), slot_size):
        return slot
    # Beyond the photo's edge the replicated border smears; blur it into a soft backdrop and
    # feather the boundary so that no hard edge marks where the photo ends.
    covered = cv2.warpAffine(
        np.full(source.shape[:2], 255, np.uint8), matrix, slot_size,
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT, borderValue=0,
    )
    backdrop = _soft_blur(slot, sigma=max(4.0, slot_size[0] / 24))
    alpha = cv2.GaussianBlur(covered, (0, 0), sigmaX=3.0)[..., None].astype(np.float32) / 255.0
    blended = slot.astype(np.float32) * alpha + backdrop.astype(np.float32) * (1.0 - alpha)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def _soft_blur(pixels: np.ndarray, sigma: float) -> np.ndarray:
    """A wide Gaussian blur computed at 1/8 size (a full-size kernel this wide costs ~10× more)."""
    height, width = pixels.shape[:2]
    small = cv2.resize(pixels, (max(1, width // 8), max(1, height // 8)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigmaX=sigma / 8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def _join(left: np.ndarray, right: np.ndarray, frame_w: int, seam_px: int) -> np.ndarray:
    """Lay A's slot (`frame_w/2 + seam/2` wide) and B's slot side by side, cross-fading the seam."""
    half, overlap = frame_w // 2, seam_px // 2
    frame = np.empty((left.shape[0], frame_w, 3), np.uint8)
    frame[:, : half - overlap] = left[:, : half - overlap]
    frame[:, half + overlap :] = right[:, 2 * overlap :]
    if overlap:
        weight = ((np.arange(2 * overlap) + 0.5) / (2 * overlap))[None, :, None]  # 0 → 1, A → B
        band = left[:, half - overlap :] * (1.0 - weight) + right[:, : 2 * overlap] * weight
        frame[:, half - overlap : half + overlap] = np.clip(np.rint(band), 0, 255).astype(np.uint8)
    return frame


def _person_box(face: tuple[float, float, float, float], half: Box, config: ComposeConfig) -> Box:
    """Head, shoulders and body below the face, inside the half with a free border around it."""
    margin = max(config.border_px, config.seam_px // 2)
    x0, y0, x1, y1 = face
    reach = (config.half_width_in_faces / 2 - 0.5) * (x1 - x0)  # shoulders beyond the face's sides
    return Box(
        x0=max(half.x0 + margin, int(np.floor(min(x0 - reach, x0)))),
        y0=max(margin, int(np.floor(y0 - 0.5 * (x1 - x0)))),
        x1=min(half.x1 - margin, int(np.ceil(max(x1 + reach, x1)))),
        y1=half.y1 - margin,
    )


DEFAULT_BUCKET = choose_bucket("720p", 1.0)


def compose_portraits(
    portrait_a: Portrait,
    portrait_b: Portrait,
    *,
    bucket: SizeBucket = DEFAULT_BUCKET,
    config: ComposeConfig = ComposeConfig(),
) -> Composition:
    """A in the left half, B in the right half, at exactly `bucket`'s size. Deterministic."""
    frame_w, frame_h = bucket.width, bucket.height
    half_w, overlap = frame_w // 2, config.seam_px // 2
    halves = (Box(0, 0, half_w, frame_h), Box(half_w, 0, frame_w, frame_h))
    slots = (Box(0, 0, half_w + overlap, frame_h), Box(half_w - overlap, 0, frame_w, frame_h))
    pixels, person_boxes, face_boxes = [], [], []
    for portrait, half, slot in zip((portrait_a, portrait_b), halves, slots):
        image = portrait.photo.image
        placement = _place(portrait.face, image.size, half, slot, config)
        pixels.append(_render(np.asarray(image), placement, (slot.width, frame_h)))
        face = placement.to_frame(portrait.face, slot.x0)
        face_boxes.append(
            Box(*(int(np.floor(v)) for v in face[:2]), *(int(np.ceil(v)) for v in face[2:]))
        )
        person_boxes.append(_person_box(face, half, config))
    frame = Image.fromarray(_join(pixels[0], pixels[1], frame_w, config.seam_px), mode="RGB")
    return Composition(
        frame=frame,
        bucket=bucket,
        person_boxes=(person_boxes[0], person_boxes[1]),
        face_boxes=(face_boxes[0], face_boxes[1]),
    )


def compose_photos(
    data_a: bytes,
    data_b: bytes,
    *,
    bucket: SizeBucket = DEFAULT_BUCKET,
    limits: PhotoLimits = PhotoLimits(),
    config: ComposeConfig = ComposeConfig(),
) -> Composition:
    """Photo bytes in, reference frame out: the one call a bot makes (via `asyncio.to_thread`)."""
    portrait_a = prepare_portrait(data_a, photo="A", limits=limits, config=config)
    portrait_b = prepare_portrait(data_b, photo="B", limits=limits, config=config)
    return compose_portraits(portrait_a, portrait_b, bucket=bucket, config=config)


# ---- preview ----

SPEAKER_COLORS: tuple[tuple[int, int, int], tuple[int, int, int]] = ((59, 130, 246), (249, 115, 22))


def draw_preview(
    composition: Composition,
    *,
    colors: tuple[tuple[int, int, int], tuple[int, int, int]] = SPEAKER_COLORS,
) -> Image.Image:
    """The frame with each person's box outlined and badged "A" / "B", for the preview card."""
    image = composition.frame.copy()
    draw = ImageDraw.Draw(image)
    line_px = max(2, composition.bucket.width // 320)
    font_px = max(14, round(min(composition.bucket.width, composition.bucket.height) * 0.045))
    font = ImageFont.load_default(size=font_px)
    radius = round(font_px * 0.9)
    for label, box, color in zip("AB", composition.person_boxes, colors):
        draw.rectangle((box.x0, box.y0, box.x1 - 1, box.y1 - 1), outline=color, width=line_px)
        cx, cy = box.x0 + line_px + radius + 4, box.y0 + line_px + radius + 4
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=color)
        draw.text((cx, cy), label, fill=(255, 255, 255), font=font, anchor="mm")
    return image
