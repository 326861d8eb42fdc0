"""Bad inputs through the Telegram conversation: each is answered clearly, the step stays, and what the
user gave before is kept (the next good input simply continues)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from chat_helpers import PHOTO_A, PHOTO_B, SCRIPT, TelegramChat, open_service, telegram_settings
from fakes.fixtures import fake_telegram, running_telegram_app  # noqa: F401
from fakes.telegram_server import FakeTelegram, FileRef
from PIL import Image, ImageOps

from bot.core.service import Actor
from bot.telegram.app import build_application


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def hopper() -> Image.Image:
    return Image.open(io.BytesIO(PHOTO_A)).convert("RGB")


def three_faces() -> bytes:
    head = hopper().crop((110, 50, 420, 400)).resize((270, 305))
    astronaut = Image.open(io.BytesIO(PHOTO_B)).convert("RGB")
    canvas = Image.new("RGB", (1000, 420), (150, 150, 150))
    canvas.paste(head, (20, 50))
    canvas.paste(astronaut.crop((140, 20, 320, 230)).resize((270, 315)), (360, 50))
    canvas.paste(ImageOps.mirror(head), (700, 50))
    return encode(canvas, "PNG")


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (300, 300), (i * 60, 0, 0)) for i in range(3)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def exif_rotated() -> bytes:
    """Stored lying on its side with orientation 6: upright only if the bot applies EXIF."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(hopper().transpose(Image.Transpose.ROTATE_90), "JPEG", quality=92, exif=exif.tobytes())


def no_face() -> bytes:
    rng = np.random.default_rng(1)
    return encode(Image.fromarray(rng.integers(90, 160, (600, 600, 3), dtype=np.uint8)), "JPEG")


def png_file(image: Image.Image, name: str) -> FileRef:
    return FileRef(encode(image, "PNG"), mime_type="image/png", file_name=name)


BAD_PHOTOS = {
    "html named .jpg": (FileRef(b"<!doctype html><html>not a photo</html>" * 20, file_name="photo.jpg"), "SVG/HTML file"),
    "random bytes named .jpg": (FileRef(bytes(range(256)) * 40, file_name="photo.jpg"), "not an image file"),
    "decompression bomb": (png_file(Image.new("1", (10_000, 10_000)), "bomb.png"), "megapixels"),
    "animated gif": (FileRef(animated_gif(), mime_type="image/gif", file_name="wave.gif"), "GIF"),
    "16x16": (png_file(Image.new("RGB", (16, 16), "white"), "tiny.png"), "16×16"),
    "no face": (FileRef(no_face(), file_name="wall.jpg"), "No face was found in photo A"),
    "three faces": (FileRef(three_faces(), mime_type="image/png", file_name="group.png"), "3 faces"),
}
GOOD_PHOTOS = {
    "cmyk jpeg": encode(hopper().convert("CMYK"), "JPEG", quality=92),
    "exif rotated": exif_rotated(),
}


@pytest.fixture
async def chat(tmp_path, fake_telegram: FakeTelegram):
    service = await open_service(tmp_path, telegram_settings(fake_telegram))
    await service.record_consent(Actor("telegram", str(fake_telegram.user.id)))
    application = build_application(service, fake_telegram.token)
    async with running_telegram_app(application):
        chat = TelegramChat(fake_telegram)
        fake_telegram.send_command("talk")
        await chat.bot_says("Send photo A")
        yield chat
    await service.queue.db.dispose()


async def test_each_bad_photo_is_refused_clearly_and_the_step_stays(chat: TelegramChat) -> None:
    fake = chat.fake
    for name, (ref, expected) in BAD_PHOTOS.items():
        fake.send_document(ref)
        refusal = await chat.bot_says("hoto A")
        assert expected in refusal.params["text"], (name, refusal.params["text"])
    fake.send_photo(FileRef(PHOTO_A, width=512, height=600))
    await chat.bot_says("Now send photo B")


async def test_a_20_mb_file_or_a_pdf_is_refused_before_it_is_downloaded(chat: TelegramChat) -> None:
    fake = chat.fake
    big = fake.send_document(FileRef(b"\xff\xd8" + bytes(20 * 1024 * 1024), file_name="huge.jpg"))
    refusal = await chat.bot_says("the limit is 10.0 MB")
    assert "Photo A is 20.0 MB" in refusal.params["text"]
    pdf = fake.send_document(FileRef(b"%PDF-1.7\n" + bytes(5000), mime_type="application/pdf", file_name="me.jpg"))
    await chat.bot_says("Photo A is not an image file")
    for sent in (big, pdf):
        assert not fake.calls(lambda c: c.route == "getFile" and c.params.get("file_id") == sent["document"]["file_id"])


@pytest.mark.parametrize("name", sorted(GOOD_PHOTOS))
async def test_cmyk_and_exif_rotated_photos_are_accepted(chat: TelegramChat, name: str) -> None:
    chat.fake.send_document(FileRef(GOOD_PHOTOS[name], file_name=f"{name}.jpg"))
    await chat.bot_says("Now send photo B")


BAD_SCRIPTS = {
    "no speech": ("(laughs)\n(sighs)", "no words to speak"),
    "one speaker": ("A: Hello\nA: Again", "Only A speaks"),
    "three speakers": ("Alice: hi\nBob: yo\nCarol: hey", "3 speakers"),
    "oversized": ("A: hi\nB: " + "word " * 700, "the limit is 2000"),
}


async def test_each_bad_script_is_refused_clearly_and_the_photos_are_kept(chat: TelegramChat) -> None:
    fake = chat.fake
    fake.send_photo(FileRef(PHOTO_A, width=512, height=600))
    await chat.bot_says("Now send photo B")
    fake.send_photo(FileRef(PHOTO_B, width=512, height=512))
    await chat.bot_says("Now the dialogue")
    for name, (script, expected) in BAD_SCRIPTS.items():
        fake.send_text(script)
        refusal = await chat.bot_says(expected)
        assert "Describe the scene" not in refusal.params["text"], name
    fake.send_photo(FileRef(PHOTO_A))  # a photo where a script is expected: asked again
    await chat.bot_says("Please send the dialogue as text")
    fake.send_text(SCRIPT)
    await chat.bot_says("Describe the scene")
    fake.send_photo(FileRef(PHOTO_B))  # a photo where the scene is expected: asked again
    await chat.bot_says("Describe the scene")
    fake.send_command("skip")
    await chat.bot_says("voice of A")


async def test_text_instead_of_a_photo_is_asked_again_in_the_users_language(
    tmp_path, fake_telegram: FakeTelegram
) -> None:
    wang = fake_telegram.add_user("Wang", language_code="zh-hans")
    service = await open_service(tmp_path, telegram_settings(fake_telegram))
    application = build_application(service, fake_telegram.token)
    chat = TelegramChat(fake_telegram, wang)
    async with running_telegram_app(application):
        fake_telegram.send_command("talk", user=wang)
        notice = await chat.bot_says("AI 生成")
        chat.press(chat.message(notice), "duet:consent:accept:-")
        await chat.bot_says("请发送照片 A")
        fake_telegram.send_text("hello", user=wang)
        await chat.bot_says("请重新发送照片 A")
    await service.queue.db.dispose()
