"""Composition: faces found (or clearly refused), each person in their half, boxes the engine can use.

Real faces come from the two public-domain sample photos in bot/samples; every other picture
(three faces, a small face, no face) is built from them here.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

import bot
from bot.core.compose import (
    BUCKETS,
    DEFAULT_BUCKET,
    Box,
    ComposeConfig,
    FaceTooSmallError,
    NoFaceError,
    SeveralFacesError,
    choose_bucket,
    compose_photos,
    compose_portraits,
    detect_faces,
    draw_preview,
    prepare_portrait,
)
from bot.core.photos import UnsupportedPhotoError

SAMPLES = Path(bot.__file__).parent / "samples"


@pytest.fixture(scope="module")
def hopper() -> Image.Image:
    return Image.open(SAMPLES / "grace_hopper.jpg").convert("RGB")


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.open(SAMPLES / "astronaut.png").convert("RGB")


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def tinted(image: Image.Image, keep: int) -> Image.Image:
    """The photo with every channel but `keep` halved: still a face, but its colour says who it is."""
    pixels = np.asarray(image).astype(np.float32)
    for channel in range(3):
        if channel != keep:
            pixels[..., channel] *= 0.5
    return Image.fromarray(pixels.astype(np.uint8), mode="RGB")


def iou(a: Box, b: Box) -> float:
    width = max(0, min(a.x1, b.x1) - max(a.x0, b.x0))
    height = max(0, min(a.y1, b.y1) - max(a.y0, b.y0))
    inter = width * height
    return inter / (a.width * a.height + b.width * b.height - inter)


# ---- buckets ----


@pytest.mark.parametrize(
    ("quality", "aspect", "size"),
    [
        ("720p", 1.0, (960, 960)),
        ("480p", 1.0, (640, 640)),
        ("720p", 1440 / 2560, (1280, 704)),  # 16:9 → key 0.55, as in the spec's worked example
        ("480p", 1440 / 2560, (896, 448)),
        ("720p", 1324 / 2146, (1216, 768)),  # 0.617 → key 0.63
        ("480p", 1324 / 2146, (768, 512)),  # 0.617 → key 0.67
        ("480p", 9.0, (320, 1280)),  # beyond the last key: the last bucket
    ],
)
def test_choose_bucket_picks_the_model_bucket_nearest_the_aspect(
    quality: str, aspect: float, size: tuple[int, int]
) -> None:
    bucket = choose_bucket(quality, aspect)
    assert (bucket.width, bucket.height) == size
    assert bucket.quality == quality


def test_a_tie_goes_to_the_first_listed_bucket() -> None:
    # 2.25 lies exactly (in binary too) between the 480p keys 2.00 and 2.50; the reference's
    # stable sort keeps the first listed.
    assert choose_bucket("480p", 2.25).aspect == 2.00


def test_the_default_is_the_720p_square() -> None:
    assert (DEFAULT_BUCKET.quality, DEFAULT_BUCKET.width, DEFAULT_BUCKET.height) == ("720p", 960, 960)


def test_an_unknown_quality_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="1080p"):
        choose_bucket("1080p")


def test_every_bucket_is_a_whole_number_of_tokens() -> None:
    # 8× VAE downsampling then 2×2 patches: each side a multiple of 16, halves too.
    for table in BUCKETS.values():
        for height, width in table.values():
            assert height % 16 == 0 and (width // 2) % 16 == 0


# ---- faces ----


def test_each_sample_photo_has_exactly_one_face(hopper: Image.Image, astronaut: Image.Image) -> None:
    assert len(detect_faces(hopper)) == 1
    assert len(detect_faces(astronaut)) == 1
    for name, photo in (("grace_hopper.jpg", "A"), ("astronaut.png", "B")):
        portrait = prepare_portrait((SAMPLES / name).read_bytes(), photo=photo)
        assert portrait.face.width >= ComposeConfig().min_face_px


class ScriptedCascade:
    """Stands in for cv2.CascadeClassifier: answers each detectMultiScale call from a script."""

    def __init__(self, answers: list[list[tuple[int, int, int, int]]]) -> None:
        self.answers = answers
        self.calls = 0

    def detectMultiScale(self, grey: np.ndarray, **params: object) -> np.ndarray:  # noqa: N802 - OpenCV's name
        answer = self.answers[self.calls]
        self.calls += 1
        return np.array(answer, dtype=np.int32).reshape(-1, 4)


def test_profiles_are_searched_both_ways_when_no_frontal_face_is_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    frontal = ScriptedCascade([[]])
    profile = ScriptedCascade([[], [(10, 20, 50, 50)]])  # found only in the mirrored image
    monkeypatch.setattr("bot.core.compose._load_cascades", lambda: (frontal, profile))
    faces = detect_faces(Image.new("RGB", (400, 300)))
    assert faces == [Box(400 - 10 - 50, 20, 400 - 10, 70)]
    assert (frontal.calls, profile.calls) == (1, 2)


def test_a_frontal_face_skips_the_profile_search(monkeypatch: pytest.MonkeyPatch) -> None:
    frontal = ScriptedCascade([[(100, 40, 80, 80), (110, 50, 60, 60)]])  # one face, found twice
    profile = ScriptedCascade([])
    monkeypatch.setattr("bot.core.compose._load_cascades", lambda: (frontal, profile))
    # A 1280-px photo is searched at 640 px: boxes come back in the photo's own pixels.
    assert detect_faces(Image.new("RGB", (1280, 960))) == [Box(200, 80, 360, 240)]
    assert profile.calls == 0


def test_a_photo_without_a_face_is_refused_with_a_tip(astronaut: Image.Image) -> None:
    no_face = astronaut.crop((256, 256, 512, 512)).resize((400, 400))  # helmet and shuttle only
    with pytest.raises(NoFaceError) as caught:
        prepare_portrait(png(no_face), photo="B")
    assert "photo B" in caught.value.message("en")
    assert "looks at the camera" in caught.value.message("en")
    assert "照片 B" in caught.value.message("zh")


def three_faces(hopper: Image.Image, astronaut: Image.Image) -> Image.Image:
    head = hopper.crop((110, 50, 420, 400)).resize((270, 305))
    canvas = Image.new("RGB", (1000, 420), (150, 150, 150))
    canvas.paste(head, (20, 50))
    canvas.paste(astronaut.crop((140, 20, 320, 230)).resize((270, 315)), (360, 50))
    canvas.paste(ImageOps.mirror(head), (700, 50))
    return canvas


def test_a_photo_with_three_faces_is_refused(hopper: Image.Image, astronaut: Image.Image) -> None:
    with pytest.raises(SeveralFacesError) as caught:
        prepare_portrait(png(three_faces(hopper, astronaut)), photo="A")
    assert caught.value.params["count"] == 3
    assert "3 faces" in caught.value.message("en")
    assert "Crop it to one person" in caught.value.message("en")


def test_a_small_face_in_the_background_does_not_count(hopper: Image.Image, astronaut: Image.Image) -> None:
    scene = Image.new("RGB", (900, 700), (150, 150, 150))
    scene.paste(hopper, (0, 100))
    scene.paste(astronaut.resize((300, 300)), (600, 40))  # a face about a quarter as wide
    portrait = prepare_portrait(png(scene), photo="A")
    assert iou(portrait.face, Box(149, 202, 378, 431)) > 0.8  # Hopper's face, moved 100 px down


def test_a_face_too_small_to_animate_is_refused(hopper: Image.Image) -> None:
    far_away = Image.new("RGB", (900, 900), (150, 150, 150))
    far_away.paste(hopper.resize((130, 152)), (380, 300))
    with pytest.raises(FaceTooSmallError) as caught:
        prepare_portrait(png(far_away), photo="A")
    assert caught.value.params["size"] < ComposeConfig().min_face_px
    assert "closer" in caught.value.message("en")


def test_a_bad_photo_b_is_reported_as_photo_b() -> None:
    with pytest.raises(UnsupportedPhotoError) as caught:
        compose_photos((SAMPLES / "grace_hopper.jpg").read_bytes(), b"GIF89a...")
    assert caught.value.params["photo"] == "B"


# ---- composition ----


@pytest.fixture(scope="module")
def portraits(hopper: Image.Image, astronaut: Image.Image):
    """Photo A tinted red, photo B tinted blue, so each half's colour tells whose it is."""
    return (
        prepare_portrait(png(tinted(hopper, keep=0)), photo="A"),
        prepare_portrait(png(tinted(astronaut, keep=2)), photo="B"),
    )


ALL_BUCKETS = [choose_bucket(quality, key) for quality, table in BUCKETS.items() for key in table]


@pytest.mark.parametrize("bucket", ALL_BUCKETS, ids=lambda b: f"{b.quality}-{b.width}x{b.height}")
def test_every_bucket_gives_its_size_and_boxes_inside_their_halves(portraits, bucket) -> None:
    result = compose_portraits(*portraits, bucket=bucket)
    assert result.frame.size == (bucket.width, bucket.height)
    assert result.frame.mode == "RGB"
    assert result.bucket == bucket
    half = bucket.width // 2
    halves = (Box(0, 0, half, bucket.height), Box(half, 0, bucket.width, bucket.height))
    for person, face, region in zip(result.person_boxes, result.face_boxes, halves):
        assert region.contains(person)
        assert person.contains(face)
        assert person.width >= 32 and person.height >= 32  # at least 2×2 tokens of 16 px
    # The engine needs background tokens (token (r, c) samples pixel (16r, 16c), spec §3.8).
    token_centres = [(x, y) for y in range(0, bucket.height, 16) for x in range(0, bucket.width, 16)]
    outside = [
        (x, y)
        for x, y in token_centres
        if not any(b.x0 <= x < b.x1 and b.y0 <= y < b.y1 for b in result.person_boxes)
    ]
    assert len(outside) >= 0.1 * len(token_centres)


def test_photo_a_stands_left_and_photo_b_right(portraits) -> None:
    frame = np.asarray(compose_portraits(*portraits).frame).astype(float)
    left, right = frame[:, :440], frame[:, 520:]
    assert left[..., 0].mean() > left[..., 2].mean() + 20  # red-tinted A
    assert right[..., 2].mean() > right[..., 0].mean() + 20  # blue-tinted B


def test_recorded_face_boxes_are_where_the_faces_are(portraits) -> None:
    result = compose_portraits(*portraits)
    found = detect_faces(result.frame)
    assert len(found) == 2
    for recorded in result.face_boxes:
        assert max(iou(recorded, face) for face in found) > 0.6


def test_faces_are_framed_head_and_shoulders(portraits) -> None:
    result = compose_portraits(*portraits)
    for face, half_x0 in zip(result.face_boxes, (0, 480)):
        assert 0.25 * 480 <= face.width <= 0.7 * 480  # neither a speck nor a close-up
        assert half_x0 + 32 <= face.x0 and face.x1 <= half_x0 + 480 - 32
        assert face.y0 >= 32 and face.y1 <= 0.6 * 960


def test_composition_is_deterministic_also_across_threads() -> None:
    data_a = (SAMPLES / "grace_hopper.jpg").read_bytes()
    data_b = (SAMPLES / "astronaut.png").read_bytes()
    first = compose_photos(data_a, data_b)
    with ThreadPoolExecutor(max_workers=2) as pool:
        others = list(pool.map(lambda _: compose_photos(data_a, data_b), range(2)))
    for other in others:
        assert other.png_bytes() == first.png_bytes()
        assert other.person_boxes == first.person_boxes and other.face_boxes == first.face_boxes


def test_the_seam_only_changes_the_columns_it_blends() -> None:
    data = (SAMPLES / "astronaut.png").read_bytes()
    soft = compose_photos(data, data, config=ComposeConfig(seam_px=32))
    hard = compose_photos(data, data, config=ComposeConfig(seam_px=0))
    changed = np.nonzero(np.any(np.asarray(soft.frame) != np.asarray(hard.frame), axis=(0, 2)))[0]
    assert len(changed) > 0
    assert changed.min() >= 480 - 16 and changed.max() < 480 + 16
    assert soft.person_boxes == hard.person_boxes


def test_area_beyond_a_short_photo_is_filled_from_the_photo(astronaut: Image.Image) -> None:
    # 300×320 px around the face cannot fill a 352×1280 half at head-and-shoulders size: the rows
    # below the photo get a blur of its bottom edge (the orange suit), not black.
    short = prepare_portrait(png(astronaut.crop((100, 0, 400, 320))), photo="A")
    result = compose_portraits(short, short, bucket=choose_bucket("720p", 1.82))
    bottom = np.asarray(result.frame)[-200:, 40:300].astype(int)
    red, green, blue = (bottom[..., channel].mean() for channel in range(3))
    assert red > 120 and red > blue + 40, (red, green, blue)


def test_png_bytes_are_the_frame() -> None:
    data = (SAMPLES / "grace_hopper.jpg").read_bytes()
    result = compose_photos(data, (SAMPLES / "astronaut.png").read_bytes())
    decoded = Image.open(io.BytesIO(result.png_bytes()))
    assert decoded.format == "PNG"
    assert np.array_equal(np.asarray(decoded), np.asarray(result.frame))


# ---- preview ----


def test_preview_outlines_and_badges_each_person_in_their_colour(portraits) -> None:
    result = compose_portraits(*portraits)
    preview = draw_preview(result)
    assert preview.size == result.frame.size
    frame, drawn = np.asarray(result.frame), np.asarray(preview)
    for box, colour in zip(result.person_boxes, [(59, 130, 246), (249, 115, 22)]):
        assert tuple(drawn[(box.y0 + box.y1) // 2, box.x0]) == colour  # the outline
        assert tuple(drawn[box.y1 - 1, (box.x0 + box.x1) // 2]) == colour
        inside = (slice(box.y0 + 200, box.y1 - 10), slice(box.x0 + 10, box.x1 - 10))
        assert np.array_equal(drawn[inside], frame[inside])  # the person is not painted over
    assert not np.array_equal(drawn, frame)
    assert np.array_equal(np.asarray(result.frame), frame)  # the frame itself is untouched
