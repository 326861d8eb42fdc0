"""Bad inputs through /talk on Discord: each is answered clearly (ephemeral, in the person's language),
refused before any download when the announced size or type already says no, and a refused script keeps
the photos: its answer carries an Edit button that reopens the form with what was typed."""

from __future__ import annotations

import io

import numpy as np
import pytest
from chat_helpers import open_service
from discord_helpers import ONE_LINE_SCRIPT, DiscordUser, custom_ids, discord_settings, modal_inputs, running_bot
from fakes.discord_server import FakeDiscord
from fakes.fixtures import fake_discord  # noqa: F401
from PIL import Image

from bot.core.service import Actor, BotService


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


def no_face() -> bytes:
    rng = np.random.default_rng(1)
    return jpeg(Image.fromarray(rng.integers(90, 160, (600, 600, 3), dtype=np.uint8)))


@pytest.fixture
async def service(tmp_path, fake_discord: FakeDiscord):
    service = await open_service(tmp_path, discord_settings(fake_discord))
    await service.record_consent(Actor("discord", fake_discord.user.id))
    yield service
    await service.queue.db.dispose()


@pytest.fixture
def served(fake_discord: FakeDiscord) -> list[str]:
    """Paths the fake CDN served: what the bot downloaded."""
    paths: list[str] = []
    serve = fake_discord.store.cdn_file

    def spy(path: str):
        paths.append(path)
        return serve(path)

    fake_discord.store.cdn_file = spy  # type: ignore[method-assign]
    return paths


BAD_PHOTOS = {
    "html named .jpg": ("photo.jpg", b"<!doctype html><html>not a photo</html>" * 20, "image/jpeg", "SVG/HTML file"),
    "random bytes named .jpg": ("photo.jpg", bytes(range(256)) * 40, "image/jpeg", "not an image file"),
    "no face": ("wall.jpg", no_face(), "image/jpeg", "No face was found in photo A"),
}


@pytest.mark.parametrize("name", sorted(BAD_PHOTOS))
async def test_a_bad_photo_is_refused_by_its_content(fake_discord: FakeDiscord, service: BotService, name: str) -> None:
    filename, data, content_type, expected = BAD_PHOTOS[name]
    alice = DiscordUser(fake_discord)
    async with running_bot(fake_discord, service):
        bad = fake_discord.upload_attachment(filename, data, content_type=content_type)
        asked = await alice.talk(photo_a=bad, script=ONE_LINE_SCRIPT)
        refusal = await alice.answer(asked, expected)

    assert refusal["flags"] & 64, "only the person sees the refusal"
    assert not [m for m in fake_discord.messages.values() if m["attachments"] and "interaction_metadata" not in m]


async def test_a_20_mb_photo_and_a_text_file_are_refused_before_download(
    fake_discord: FakeDiscord, service: BotService, served: list[str]
) -> None:
    alice = DiscordUser(fake_discord)
    async with running_bot(fake_discord, service):
        huge = fake_discord.upload_attachment("huge.jpg", b"\xff\xd8" + bytes(20 * 1024 * 1024), content_type="image/jpeg")
        asked = await alice.talk(photo_a=huge, script=ONE_LINE_SCRIPT)
        answer = await fake_discord.wait_for_response(asked)
        assert answer["type"] == 4, "refused at once, without deferring"
        await alice.answer(asked, "Photo A is 20.0 MB; the limit is 10.0 MB")
        notes = fake_discord.upload_attachment("notes.txt", b"A: hi\nB: yo", content_type="text/plain")
        asked = await alice.talk(photo_b=notes, script=ONE_LINE_SCRIPT)
        await alice.answer(asked, "Photo B is not an image file")

    assert served == [], "nothing was downloaded"


BAD_SCRIPTS = {
    "one speaker": ("A: Hello. A: Again.", "Only A speaks"),
    "three speakers": ("(s1) Hi there. (s2) Hello. (s3) Hey you two.", "3 speakers"),
}


@pytest.mark.parametrize("name", sorted(BAD_SCRIPTS))
async def test_a_bad_script_is_refused_and_edit_fixes_it_without_sending_the_photos_again(
    fake_discord: FakeDiscord, service: BotService, name: str
) -> None:
    script, expected = BAD_SCRIPTS[name]
    alice = DiscordUser(fake_discord)
    async with running_bot(fake_discord, service):
        asked = await alice.talk(script=script)
        refusal = await alice.answer(asked, expected)
        (edit_id,) = custom_ids(refusal)
        assert edit_id.startswith("duet:draft:edit:")
        pressed = await fake_discord.click_button(refusal["id"], edit_id)
        modal = await fake_discord.wait_for_response(pressed)
        assert modal_inputs(modal)["duet:script"]["value"] == script, "what was typed is kept"
        submitted = await fake_discord.submit_modal(pressed, {"duet:script": ONE_LINE_SCRIPT})
        await alice.answer(submitted, "preview is below")
        await alice.preview()


async def test_an_unknown_voice_is_named_with_suggestions(fake_discord: FakeDiscord, service: BotService) -> None:
    alice = DiscordUser(fake_discord)
    async with running_bot(fake_discord, service):
        asked = await alice.talk(script=ONE_LINE_SCRIPT, voice_b="robot_voice")
        await alice.answer(asked, "There is no voice “robot_voice”")


async def test_refusals_and_forms_speak_the_persons_language(fake_discord: FakeDiscord, service: BotService) -> None:
    wang = DiscordUser(fake_discord, fake_discord.add_user("wang", locale="zh-CN"))
    async with running_bot(fake_discord, service):
        asked = await wang.talk(script=ONE_LINE_SCRIPT)
        await wang.answer(asked, "AI 生成")  # the consent notice, first use
        asked = await wang.talk()
        modal = await fake_discord.wait_for_response(asked)
        typed = await wang.talk(script="A: 你好。A: 再见。")
        await wang.answer(typed, "只有")

    assert modal["data"]["title"] == "你的对话"


async def test_voice_autocomplete_offers_matching_voices(fake_discord: FakeDiscord, service: BotService) -> None:
    async with running_bot(fake_discord, service):
        typing = await fake_discord.autocomplete("talk", {"voice_a": "bel"}, focused="voice_a")
        answer = await fake_discord.wait_for_response(typing)

    assert answer["type"] == 8
    assert "af_bella" in [choice["value"] for choice in answer["data"]["choices"]]
    assert len(answer["data"]["choices"]) <= 25

