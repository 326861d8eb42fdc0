"""Photo decoding and validation: every bad input of the chat front ends, and the conversions.

Fixtures are generated here, from Pillow and a few hand-written bytes, so each test shows what it
feeds in. The API takes bytes only: a file name or MIME type never reaches it.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageFile, ImageOps

from bot.core.errors import MESSAGE_CATALOG, template_fields
from bot.core.photos import (
    AnimatedPhotoError,
    DamagedPhotoError,
    HeicPhotoError,
    NotAnImageError,
    PhotoAspectError,
    PhotoBombError,
    PhotoError,
    PhotoLimits,
    PhotoTooLargeError,
    PhotoTooSmallError,
    TooManyPixelsError,
    UnsupportedPhotoError,
    load_photo,
    png_bytes,
)


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def gradient(size: tuple[int, int] = (400, 300)) -> Image.Image:
    """A smooth colour ramp: any channel swap, clipping or flip shows up in its corners."""
    width, height = size
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    pixels = np.stack([x, y, np.full_like(x, 96)], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def bilevel_png(width: int, height: int) -> bytes:
    """A 1-bit all-black PNG declaring `width`×`height`: a few KB on disk, gigabytes decoded."""
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    idat = zlib.compress(row * height, 9)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any pixel data is decoded (Pillow decodes only in ImageFile.load)."""

    def refuse(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded before the file was refused")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


# ---- accepted formats and conversions ----


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_jpeg_png_and_webp_decode_to_rgb(fmt: str) -> None:
    source = gradient()
    photo = load_photo(encode(source, fmt, quality=95), photo="A")
    assert photo.source_format == fmt
    assert photo.image.mode == "RGB"
    assert photo.image.size == photo.source_size == (400, 300)
    difference = np.abs(np.asarray(photo.image, np.int16) - np.asarray(source, np.int16))
    assert difference.mean() < 3


def test_a_phone_mpo_is_read_as_its_first_picture() -> None:
    main, depth_map = gradient(), Image.new("RGB", (400, 300), (0, 255, 0))
    data = encode(main, "MPO", save_all=True, append_images=[depth_map], quality=95)
    photo = load_photo(data, photo="A")
    assert photo.source_format == "JPEG"
    assert np.abs(np.asarray(photo.image, np.int16) - np.asarray(main, np.int16)).mean() < 3


def test_cmyk_jpeg_comes_out_with_the_right_colours() -> None:
    # Pure process cyan, magenta, yellow and black quarters.
    cmyk = Image.new("CMYK", (400, 400))
    for index, ink in enumerate([(255, 0, 0, 0), (0, 255, 0, 0), (0, 0, 255, 0), (0, 0, 0, 255)]):
        cmyk.paste(ink, ((index % 2) * 200, (index // 2) * 200, (index % 2) * 200 + 200, (index // 2) * 200 + 200))
    image = load_photo(encode(cmyk, "JPEG", quality=95), photo="A").image
    assert image.mode == "RGB"
    samples = [image.getpixel((100, 100)), image.getpixel((300, 100)), image.getpixel((100, 300)), image.getpixel((300, 300))]
    expected = [(0, 255, 255), (255, 0, 255), (255, 255, 0), (0, 0, 0)]
    for got, want in zip(samples, expected):
        assert max(abs(g - w) for g, w in zip(got, want)) < 12, (got, want)


def test_sixteen_bit_grey_png_is_scaled_not_clipped() -> None:
    ramp = np.linspace(0, 65535, 512, dtype=np.float64)[None, :].repeat(300, 0).astype(np.uint16)
    data = encode(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # really 16 bits per sample
    image = np.asarray(load_photo(data, photo="A").image)
    assert image[:, :, 0].tolist() == image[:, :, 2].tolist()  # still grey
    row = image[150, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255
    assert 120 <= row[256] <= 136  # mid-grey, where convert("RGB") would give white
    assert np.all(np.diff(row) >= 0)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_flattened_onto_the_neutral_background(mode: str) -> None:
    # Opaque red square on a fully transparent field whose hidden colour is green.
    rgba = Image.new("RGBA", (300, 300), (0, 255, 0, 0))
    rgba.paste((255, 0, 0, 255), (100, 100, 200, 200))
    if mode == "LA":
        source = rgba.convert("LA")
    elif mode == "P":
        source = rgba.convert("P")  # keeps a transparent palette entry
    else:
        source = rgba
    image = load_photo(encode(source, "PNG"), photo="A").image
    background = PhotoLimits().background_rgb
    assert image.getpixel((10, 10)) == background
    centre = image.getpixel((150, 150))
    assert centre == (rgba.convert(source.mode).convert("RGB").getpixel((150, 150)))
    assert centre != background


def test_half_transparent_pixels_blend_with_the_background() -> None:
    rgba = Image.new("RGBA", (300, 300), (255, 0, 0, 128))
    image = load_photo(encode(rgba, "PNG"), photo="A").image
    red, green, blue = image.getpixel((150, 150))
    grey = PhotoLimits().background_rgb[1]
    assert abs(red - (255 + 200) / 2) <= 2 and abs(green - grey / 2) <= 2 and abs(blue - grey / 2) <= 2


def icc_matrix_profile(red_xyz, green_xyz, blue_xyz, description: str) -> bytes:
    """A minimal ICC v2 RGB display profile (matrix + gamma 2.2 curves), built byte by byte."""

    def s15(value: float) -> bytes:
        return struct.pack(">i", round(value * 65536))

    def xyz(values) -> bytes:
        return b"XYZ \0\0\0\0" + b"".join(s15(v) for v in values)

    text = description.encode("ascii") + b"\0"
    tags = [
        (b"desc", b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + bytes(4 + 4 + 2 + 1 + 67)),
        (b"wtpt", xyz((0.9642, 1.0, 0.8249))),
        (b"rXYZ", xyz(red_xyz)),
        (b"gXYZ", xyz(green_xyz)),
        (b"bXYZ", xyz(blue_xyz)),
        (b"rTRC", b"curv\0\0\0\0" + struct.pack(">IH", 1, 0x0233) + b"\0\0"),
        (b"cprt", b"text\0\0\0\0" + b"public domain\0"),
    ]
    tags.insert(6, (b"gTRC", tags[5][1]))
    tags.insert(7, (b"bTRC", tags[5][1]))
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for signature, body in tags:
        body += bytes(-len(body) % 4)
        table += signature + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = (
        struct.pack(">I", size) + bytes(4) + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ "
        + struct.pack(">6H", 2024, 1, 1, 0, 0, 0) + b"acsp" + bytes(24) + struct.pack(">I", 0)
        + s15(0.9642) + s15(1.0) + s15(0.8249) + bytes(48)
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data


# sRGB's primaries adapted to D50, as ICC profiles store them.
_SRGB_RED, _SRGB_GREEN, _SRGB_BLUE = (0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141)


def test_an_embedded_colour_profile_is_applied() -> None:
    # A profile whose "red" channel is sRGB's green: stored (200, 30, 30) means a green pixel.
    swapped = icc_matrix_profile(_SRGB_GREEN, _SRGB_RED, _SRGB_BLUE, "Swapped primaries")
    data = encode(Image.new("RGB", (300, 300), (200, 30, 30)), "PNG", icc_profile=swapped)
    red, green, blue = load_photo(data, photo="A").image.getpixel((150, 150))
    assert green > 150 and red < 90 and blue < 90, (red, green, blue)


def test_an_srgb_or_broken_profile_leaves_the_pixels_alone() -> None:
    source = gradient()
    plain = np.asarray(load_photo(encode(source, "PNG"), photo="A").image)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for profile in (srgb, b"\x00\x00\x01\x00garbage"):
        tagged = load_photo(encode(source, "PNG", icc_profile=profile), photo="A").image
        assert np.array_equal(np.asarray(tagged), plain)


# ---- EXIF orientation ----

# orientation tag → the transpose a viewer applies; we store the inverse so the viewer's result is upright
_VIEWER_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_INVERSE = {Image.Transpose.ROTATE_270: Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_90: Image.Transpose.ROTATE_270}


def upright_with_markers() -> Image.Image:
    """Portrait 300×400: red block top-left, blue block top-right, rest grey."""
    image = Image.new("RGB", (300, 400), (128, 128, 128))
    image.paste((255, 0, 0), (0, 0, 80, 80))
    image.paste((0, 0, 255), (220, 0, 300, 80))
    return image


@pytest.mark.parametrize("orientation", sorted(_VIEWER_TRANSPOSE))
def test_exif_rotated_photo_comes_out_upright(orientation: int) -> None:
    upright = upright_with_markers()
    viewer = _VIEWER_TRANSPOSE[orientation]
    stored = upright.transpose(_INVERSE.get(viewer, viewer))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    assert ImageOps.exif_transpose(Image.open(io.BytesIO(data))).size == (300, 400)  # fixture sanity

    photo = load_photo(data, photo="A")
    assert photo.image.size == photo.source_size == (300, 400)
    red, blue = photo.image.getpixel((40, 40)), photo.image.getpixel((260, 40))
    assert red[0] > 200 and red[2] < 60, red
    assert blue[2] > 200 and blue[0] < 60, blue


def test_stored_png_keeps_no_exif_gps_or_colour_profile() -> None:
    exif = Image.Exif()
    exif[0x8825] = {2: (52.0, 31.0, 0.0)}  # GPSInfo: a latitude
    exif[0x010F] = "PhoneMaker"
    data = encode(gradient(), "JPEG", exif=exif.tobytes(), icc_profile=b"")
    stored = Image.open(io.BytesIO(png_bytes(load_photo(data, photo="A").image)))
    assert stored.format == "PNG"
    assert len(stored.getexif()) == 0
    assert "icc_profile" not in stored.info and "exif" not in stored.info


def test_a_large_photo_is_downscaled_but_reports_its_real_size() -> None:
    data = encode(gradient().resize((4000, 3000), Image.Resampling.BILINEAR), "JPEG", quality=90)
    photo = load_photo(data, photo="A")
    assert photo.source_size == (4000, 3000)
    assert 1024 <= max(photo.image.size) <= PhotoLimits().work_long_side
    assert abs(photo.image.width / photo.image.height - 4 / 3) < 0.01


# ---- refusals ----


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("photo.jpg", b"not really")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b'<svg xmlns="http://www.w3.org/2000/svg" width="400" height="400"><circle r="90"/></svg>', "SVG/HTML"),
        (b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>", "SVG/HTML"),
        (b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n%%EOF", "PDF"),
        (_zip_bytes(), "ZIP"),
    ],
)
def test_documents_named_jpg_are_refused_by_their_real_type(data: bytes, kind: str, no_decoding: None) -> None:
    with pytest.raises(UnsupportedPhotoError) as caught:
        load_photo(data, photo="B")
    assert caught.value.params["kind"] == kind
    assert f"Photo B is a {kind} file" in caught.value.message("en")
    assert f"照片 B 是 {kind} 文件" in caught.value.message("zh-CN")


@pytest.mark.parametrize("data", [b"just some text that somebody named selfie.jpg", b"", bytes(4096)])
def test_bytes_of_no_known_type_are_refused(data: bytes, no_decoding: None) -> None:
    with pytest.raises(NotAnImageError) as caught:
        load_photo(data, photo="A")
    assert "Photo A is not an image file" in caught.value.message("en")


def test_an_iphone_heic_photo_is_refused_with_how_to_avoid_it(no_decoding: None) -> None:
    data = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)
    with pytest.raises(HeicPhotoError) as caught:
        load_photo(data, photo="A")
    assert "Most Compatible" in caught.value.message("en")
    assert "兼容性最佳" in caught.value.message("zh")


@pytest.mark.parametrize(("fmt", "kind"), [("GIF", "GIF"), ("BMP", "BMP"), ("TIFF", "TIFF")])
def test_formats_outside_the_allow_list_are_refused(fmt: str, kind: str, no_decoding: None) -> None:
    with pytest.raises(UnsupportedPhotoError) as caught:
        load_photo(encode(gradient(), fmt), photo="A")
    assert caught.value.params["kind"] == kind


def test_an_animated_gif_is_refused() -> None:
    frames = [Image.new("RGB", (300, 300), (i * 40, 0, 0)) for i in range(5)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)
    with pytest.raises(UnsupportedPhotoError) as caught:
        load_photo(data, photo="A")
    assert "Photo A is a GIF file" in caught.value.message("en")


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_animated_png_and_webp_are_refused(fmt: str, no_decoding: None) -> None:
    frames = [Image.new("RGB", (300, 300), (0, i * 40, 0)) for i in range(4)]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=80)
    with pytest.raises(AnimatedPhotoError) as caught:
        load_photo(data, photo="A")
    assert caught.value.params["frames"] == 4
    assert "animated" in caught.value.message("en")


def test_a_decompression_bomb_is_refused_before_decoding(no_decoding: None) -> None:
    data = bilevel_png(10_000, 10_000)
    assert len(data) < 20_000
    with pytest.raises(TooManyPixelsError) as caught:
        load_photo(data, photo="A")
    assert "10000×10000" in caught.value.message("en")


def test_pillows_bomb_warning_is_a_refusal_even_with_a_raised_pixel_cap(no_decoding: None) -> None:
    # 100 MP: above Pillow's warning threshold (89 MP), below our (raised) cap.
    with pytest.raises(TooManyPixelsError):
        load_photo(bilevel_png(10_000, 10_000), photo="A", limits=PhotoLimits(max_pixels=150_000_000))


def test_a_bomb_beyond_pillows_hard_limit_is_refused(no_decoding: None) -> None:
    with pytest.raises(PhotoBombError) as caught:
        load_photo(bilevel_png(14_000, 14_000), photo="A")
    assert "enormous" in caught.value.message("en")


def test_a_truncated_jpeg_is_refused() -> None:
    data = encode(gradient((800, 600)), "JPEG", quality=95)
    with pytest.raises(DamagedPhotoError):
        load_photo(data[: len(data) // 2], photo="A")


def test_a_truncated_png_is_refused() -> None:
    noise = np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "PNG")
    with pytest.raises(DamagedPhotoError):
        load_photo(data[: len(data) * 2 // 3], photo="A")


def test_a_20_mb_file_is_refused_before_it_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the file was parsed")

    monkeypatch.setattr(Image, "open", refuse)
    data = b"\xff\xd8\xff\xe0" + bytes(20 * 1024 * 1024)
    with pytest.raises(PhotoTooLargeError) as caught:
        load_photo(data, photo="A")
    message = caught.value.message("en")
    assert "20.0 MB" in message and "10.0 MB" in message


@pytest.mark.parametrize("size", [(16, 16), (1, 1), (255, 4000 // 4)])
def test_a_tiny_image_is_refused(size: tuple[int, int], no_decoding: None) -> None:
    with pytest.raises(PhotoTooSmallError) as caught:
        load_photo(encode(Image.new("RGB", size, (9, 9, 9)), "PNG"), photo="A")
    assert f"{size[0]}×{size[1]}" in caught.value.message("en")


@pytest.mark.parametrize("size", [(300, 1500), (1300, 320)])
def test_a_long_thin_image_is_refused(size: tuple[int, int], no_decoding: None) -> None:
    with pytest.raises(PhotoAspectError):
        load_photo(encode(Image.new("RGB", size), "PNG"), photo="A")


def test_the_pixel_cap_names_the_declared_size(no_decoding: None) -> None:
    with pytest.raises(TooManyPixelsError) as caught:
        load_photo(encode(gradient((600, 400)), "PNG"), photo="A", limits=PhotoLimits(max_pixels=200_000))
    assert "600×400" in caught.value.message("en")


# ---- messages ----


def test_every_photo_message_exists_in_both_languages_with_the_same_fields() -> None:
    photo_keys = [key for key in MESSAGE_CATALOG if key.startswith("photo.")]
    assert len(photo_keys) >= 9
    for key in photo_keys:
        templates = MESSAGE_CATALOG[key]
        assert template_fields(templates["en"]) == template_fields(templates["zh"]), key
        assert "photo" in template_fields(templates["en"]), key
        assert any("\u4e00" <= char <= "\u9fff" for char in templates["zh"]), key


def test_a_refusal_is_an_input_error_with_an_admin_detail_kept_apart() -> None:
    with pytest.raises(PhotoError) as caught:
        load_photo(b"%PDF-1.4 secret", photo="A")
    assert caught.value.admin_detail  # Pillow's own words, for the logs
    assert caught.value.admin_detail not in caught.value.message("en")
