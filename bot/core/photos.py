"""Untrusted photo bytes → one upright, 8-bit RGB image small enough to compose, or a typed refusal.

This module is the only place in Duet that decodes a user's image. It owns the safety rules
(`reference/queue-reliability.md` D1): the byte size is checked before anything is parsed, the
format is decided by the bytes (JPEG, PNG or WebP; a file name or MIME type is never consulted),
the pixel count is read from the header and capped *before* pixels are decoded, animated and
truncated files are refused, and the result is re-encoded by the caller (`png_bytes`), which drops
EXIF, GPS and ICC data. It must not touch files, the network or a database: callers pass bytes and
run `load_photo` through `asyncio.to_thread`, because decoding blocks.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from bot.core.errors import InputError

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP")


@dataclass(frozen=True)
class PhotoLimits:
    """What a photo may be. Defaults suit phone photos and the model's largest bucket (1920 px)."""

    max_bytes: int = 10 * 1024 * 1024  # Discord's default upload limit; a compressed phone photo is 2–6 MB
    max_pixels: int = 24_000_000  # a 24 MP camera; far below Pillow's own 89 MP bomb warning
    min_short_side: int = 256  # below this a face is too small to animate, whatever the crop
    max_aspect: float = 4.0  # long side / short side; the model's most extreme bucket is ≈ 4:1
    work_long_side: int = 2048  # composition never needs more; larger photos are downscaled once
    background_rgb: tuple[int, int, int] = (200, 200, 200)  # neutral light grey behind transparency


@dataclass(frozen=True)
class Photo:
    """A decoded photo: `image` is RGB, upright and at most `work_long_side` px on its long side."""

    image: Image.Image
    source_format: str  # "JPEG" | "PNG" | "WEBP" (an MPO from a phone camera counts as JPEG)
    source_size: tuple[int, int]  # (width, height) after EXIF orientation, before downscaling


# ---- errors: each says which photo (A or B), what is wrong and what to send instead ----


class PhotoError(InputError):
    """A photo cannot be used. Every subclass takes `photo="A"|"B"` among its params."""

    key: ClassVar[str] = "photo.invalid"
    templates = {
        "en": "Photo {photo} cannot be used. Send a clear JPEG, PNG or WebP photo.",
        "zh": "照片 {photo} 无法使用。请发送清晰的 JPEG、PNG 或 WebP 照片。",
    }


class PhotoTooLargeError(PhotoError):
    key = "photo.too_many_bytes"
    templates = {
        "en": "Photo {photo} is {size_mb} MB; the limit is {limit_mb} MB. "
        "Send it as a compressed photo instead of a file, or save it smaller.",
        "zh": "照片 {photo} 大小为 {size_mb} MB，上限为 {limit_mb} MB。请以“照片”而不是“文件”的方式发送，或将其另存为更小的文件。",
    }


class UnsupportedPhotoError(PhotoError):
    key = "photo.unsupported_format"
    templates = {
        "en": "Photo {photo} is a {kind} file, not a JPEG, PNG or WebP photo. "
        "Send a still photo in one of those formats.",
        "zh": "照片 {photo} 是 {kind} 文件，不是 JPEG、PNG 或 WebP 照片。请发送这几种格式之一的静态照片。",
    }


class HeicPhotoError(UnsupportedPhotoError):
    key = "photo.heic"
    templates = {
        "en": "Photo {photo} is in Apple's HEIC format, which Duet cannot read. Send it as a photo "
        "(not as a file), or on the iPhone choose Settings → Camera → Formats → Most Compatible.",
        "zh": "照片 {photo} 是苹果的 HEIC 格式，无法读取。请以“照片”而不是“文件”的方式发送，"
        "或在 iPhone 上选择 设置 → 相机 → 格式 → 兼容性最佳。",
    }


class NotAnImageError(UnsupportedPhotoError):
    key = "photo.not_an_image"
    templates = {
        "en": "Photo {photo} is not an image file. Send a JPEG, PNG or WebP photo.",
        "zh": "照片 {photo} 不是图片文件。请发送 JPEG、PNG 或 WebP 照片。",
    }


class AnimatedPhotoError(PhotoError):
    key = "photo.animated"
    templates = {
        "en": "Photo {photo} is animated ({frames} frames). Send a still photo of the person.",
        "zh": "照片 {photo} 是动图（共 {frames} 帧）。请发送这个人的静态照片。",
    }


class DamagedPhotoError(PhotoError):
    key = "photo.damaged"
    templates = {
        "en": "Photo {photo} could not be read: the file is damaged or incomplete. Send it again.",
        "zh": "无法读取照片 {photo}：文件已损坏或不完整。请重新发送。",
    }


class TooManyPixelsError(PhotoError):
    key = "photo.too_many_pixels"
    templates = {
        "en": "Photo {photo} is {width}×{height} pixels; at most {limit_mp} megapixels are accepted. "
        "Downscale it, or send it as a compressed photo.",
        "zh": "照片 {photo} 为 {width}×{height} 像素，最多接受 {limit_mp} 百万像素。请缩小后再发送，或以“照片”方式发送。",
    }


class PhotoBombError(TooManyPixelsError):
    key = "photo.decompression_bomb"
    templates = {
        "en": "Photo {photo} declares an enormous size (it would expand to far more than {limit_mp} "
        "megapixels in memory), so it was not opened. Send an ordinary photo.",
        "zh": "照片 {photo} 声明的尺寸极大（解码后将远超 {limit_mp} 百万像素），因此未被打开。请发送普通照片。",
    }


class PhotoTooSmallError(PhotoError):
    key = "photo.too_small"
    templates = {
        "en": "Photo {photo} is only {width}×{height} pixels; it needs at least {minimum} pixels on "
        "its shorter side. Send the original photo rather than a thumbnail.",
        "zh": "照片 {photo} 只有 {width}×{height} 像素，短边至少需要 {minimum} 像素。请发送原图，而不是缩略图。",
    }


class PhotoAspectError(PhotoError):
    key = "photo.aspect"
    templates = {
        "en": "Photo {photo} is {width}×{height} pixels, too long and narrow (more than {limit}:1). "
        "Crop it closer to the person.",
        "zh": "照片 {photo} 为 {width}×{height} 像素，过于细长（超过 {limit}:1）。请裁剪到人物附近。",
    }


# What refused bytes most likely are, for a more helpful refusal; consulted only after Pillow,
# restricted to ACCEPTED_FORMATS, has refused them. Names are format acronyms, which read the same
# in every locale. (prefix, offset, name)
_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"GIF8", 0, "GIF"),
    (b"%PDF", 0, "PDF"),
    (b"PK\x03\x04", 0, "ZIP"),
    (b"ftypheic", 4, "HEIC"),
    (b"ftypheix", 4, "HEIC"),
    (b"ftypmif1", 4, "HEIC"),
    (b"ftypavif", 4, "AVIF"),
    (b"BM", 0, "BMP"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"SIMPLE  =", 0, "FITS"),
)
_MARKUP_MARKERS = (b"<svg", b"<?xml", b"<!doctype", b"<html")


def identify_refused(data: bytes) -> str | None:
    """The format of bytes Duet refuses ("GIF", "SVG/HTML", …), or None when they look like no file type."""
    for prefix, offset, name in _SIGNATURES:
        if data[offset : offset + len(prefix)] == prefix:
            return name
    head = data[:512].lstrip().lower()
    if any(marker in head for marker in _MARKUP_MARKERS):
        return "SVG/HTML"
    return None


def _unsupported(data: bytes, photo: str, detail: str) -> UnsupportedPhotoError:
    kind = identify_refused(data)
    if kind == "HEIC":
        return HeicPhotoError(photo=photo, admin_detail=detail)
    if kind is None:
        return NotAnImageError(photo=photo, admin_detail=detail)
    return UnsupportedPhotoError(photo=photo, kind=kind, admin_detail=detail)


def load_photo(data: bytes, *, photo: str, limits: PhotoLimits = PhotoLimits()) -> Photo:
    """Decode `data` (photo `photo`, "A" or "B") into a `Photo`, or raise a `PhotoError`.

    Order matters: cheap checks that need no parsing come first, then the header (format, size,
    frames), and only then the decoder, so a bomb or a hostile file never reaches a pixel buffer.
    """
    if len(data) > limits.max_bytes:
        raise PhotoTooLargeError(
            photo=photo, size_mb=_megabytes(len(data)), limit_mb=_megabytes(limits.max_bytes)
        )
    # Pillow warns about bombs while reading the header (and raises above twice its cap). Warnings
    # are recorded rather than raised, so the refusal below can still name the declared size.
    # (catch_warnings is process-wide, hence racy across threads: the pixel cap in _check_header,
    # which reads the header's size itself, is the guard that does not depend on it.)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=list(ACCEPTED_FORMATS))
        except UnidentifiedImageError as exc:
            raise _unsupported(data, photo, str(exc)) from exc
        except Image.DecompressionBombError as exc:
            raise PhotoBombError(
                photo=photo, limit_mp=limits.max_pixels // 1_000_000, admin_detail=str(exc)
            ) from exc
        except (OSError, SyntaxError, ValueError) as exc:  # a header Pillow recognised but cannot parse
            raise DamagedPhotoError(photo=photo, admin_detail=repr(exc)) from exc
    is_bomb = any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught)
    _check_header(image, photo, limits, is_bomb=is_bomb)
    return _decode(image, photo, limits)


def _check_header(image: Image.Image, photo: str, limits: PhotoLimits, *, is_bomb: bool) -> None:
    """Refuse by what the header declares, before any pixel is decoded."""
    width, height = image.size
    if is_bomb or width * height > limits.max_pixels:
        raise TooManyPixelsError(
            photo=photo, width=width, height=height, limit_mp=limits.max_pixels // 1_000_000
        )
    # An MPO (phone cameras) stores the photo first and a preview or depth map after it: not animation.
    frames = getattr(image, "n_frames", 1)
    if frames > 1 and image.format != "MPO":
        raise AnimatedPhotoError(photo=photo, frames=frames)
    short, long = sorted((width, height))
    if short < limits.min_short_side:
        raise PhotoTooSmallError(photo=photo, width=width, height=height, minimum=limits.min_short_side)
    if long > limits.max_aspect * short:
        raise PhotoAspectError(photo=photo, width=width, height=height, limit=limits.max_aspect)


def _decode(image: Image.Image, photo: str, limits: PhotoLimits) -> Photo:
    source_format = "JPEG" if image.format == "MPO" else str(image.format)
    width, height = image.size
    if _orientation(image) in _TRANSPOSING_ORIENTATIONS:
        width, height = height, width
    if source_format == "JPEG" and max(image.size) > limits.work_long_side:
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale (the largest that keeps at least half of
        # `work_long_side`): a 12 MP photo then needs no resize at all and a quarter of the memory.
        target_w, target_h = _fit_within(image.size, limits.work_long_side)
        image.draft(image.mode, (max(1, target_w // 2), max(1, target_h // 2)))
    try:
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data, or broken EXIF
        raise DamagedPhotoError(photo=photo, admin_detail=repr(exc)) from exc
    image = _to_rgb(image, limits.background_rgb)
    target = _fit_within(image.size, limits.work_long_side)
    if target != image.size:
        # Pillow's bilinear filter widens with the reduction (it averages, no aliasing); composition
        # resamples once more anyway, so Lanczos would cost 3× the time for nothing visible.
        image = image.resize(target, Image.Resampling.BILINEAR)
    return Photo(image=image, source_format=source_format, source_size=(width, height))


_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}  # the ones that swap width and height
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_SRGB = ImageCms.createProfile("sRGB")


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright); a malformed EXIF block counts as upright."""
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except (OSError, SyntaxError, ValueError, TypeError):
        return 1


def _to_rgb(image: Image.Image, background_rgb: tuple[int, int, int]) -> Image.Image:
    """Any decoded mode → 8-bit RGB with the colours a person would expect to see.

    Pillow's plain `convert("RGB")` clips 16-bit grey to white, drops alpha onto whatever the
    hidden pixels were, and ignores colour profiles (a CMYK print file or a Display P3 phone photo
    come out with wrong colours). Each of those cases is handled here.
    """
    icc_profile = image.info.get("icc_profile")
    if image.mode in _SIXTEEN_BIT_MODES:
        grey = np.asarray(image).astype(np.uint32) >> 8  # 0..65535 → 0..255
        image = Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8), mode="L")
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        flattened = Image.new("RGBA", rgba.size, (*background_rgb, 255))
        flattened.alpha_composite(rgba)
        image = flattened
    if icc_profile and image.mode in ("RGB", "CMYK"):
        converted = _convert_to_srgb(image, icc_profile)
        if converted is not None:
            return converted
    return image.convert("RGB")


def _convert_to_srgb(image: Image.Image, icc_profile: bytes) -> Image.Image | None:
    """Apply the embedded colour profile; None when it is sRGB already or cannot be used."""
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
        if image.mode == "RGB" and "srgb" in ImageCms.getProfileDescription(source).lower():
            return None
        return ImageCms.profileToProfile(
            image, source, _SRGB, outputMode="RGB", renderingIntent=ImageCms.Intent.PERCEPTUAL
        )
    except (ImageCms.PyCMSError, OSError, ValueError):
        return None  # a broken profile is not worth refusing a photo for; plain conversion follows


def _fit_within(size: tuple[int, int], long_side: int) -> tuple[int, int]:
    """`size` scaled down (never up) so that its long side is at most `long_side`."""
    width, height = size
    scale = long_side / max(width, height)
    if scale >= 1:
        return size
    return max(1, round(width * scale)), max(1, round(height * scale))


def _megabytes(size_bytes: int) -> str:
    return f"{size_bytes / (1024 * 1024):.1f}"


def png_bytes(image: Image.Image) -> bytes:
    """Losslessly encode `image` as PNG: what Duet stores, with no EXIF, GPS or ICC data left."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # 5× faster than 6, only ~10 % larger
    return buffer.getvalue()
