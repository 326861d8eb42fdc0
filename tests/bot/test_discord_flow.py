"""The Discord front end driven like a person, through the real discord.py and the fake Discord:
/talk to a delivered MP4, the modal and script-file paths, Edit, cancel, re-roll, and a restart mid-job."""

from __future__ import annotations

import time

import pytest
from chat_helpers import SCRIPT, FakeEngine, make_mp4, open_service
from discord_helpers import (
    ONE_LINE_SCRIPT,
    DiscordUser,
    custom_ids,
    discord_settings,
    modal_inputs,
    restart,
    running_bot,
)
from fakes.discord_server import ROUTE_CALLBACK, ROUTE_CREATE_MESSAGE, ROUTE_EDIT_MESSAGE, FakeDiscord
from fakes.fixtures import fake_discord  # noqa: F401

from bot.core.drafts import DraftNotFound
from bot.core.service import Actor, BotService
from storage.contract import JobState


@pytest.fixture
async def service(tmp_path, fake_discord: FakeDiscord):
    service = await open_service(tmp_path, discord_settings(fake_discord))
    yield service
    await service.queue.db.dispose()


async def consented(service: BotService, fake: FakeDiscord, user=None) -> None:
    await service.record_consent(Actor("discord", (user or fake.user).id))


def video_posts(fake: FakeDiscord) -> list:
    return [c for c in fake.calls(ROUTE_CREATE_MESSAGE) if c.status == 200 and any(f.filename == "duet.mp4" for f in c.files)]


def edits_of(fake: FakeDiscord, message_id: str, needle: str):
    return lambda c: c.route == ROUTE_EDIT_MESSAGE and c.path.endswith(f"/{message_id}") and needle in (c.params.get("content") or "")


async def test_talk_with_a_script_ends_in_one_delivered_video(fake_discord: FakeDiscord, service: BotService) -> None:
    fake = fake_discord
    alice = DiscordUser(fake)
    engine = FakeEngine(service)
    mp4 = make_mp4(1.0)
    async with running_bot(fake, service) as watcher:
        sent_at = time.monotonic()
        asked = await alice.talk(script=ONE_LINE_SCRIPT, scene="Two pioneers in a hangar", voice_a="af_bella")
        ack = await fake.wait_for_call(lambda c: c.route == ROUTE_CALLBACK and c.status == 200)
        assert ack.params["type"] == 5 and ack.params["data"]["flags"] == 64  # ephemeral "thinking…"
        assert ack.at_s - sent_at < 3.0
        notice = await alice.answer(asked, "Press Accept")
        await alice.press(notice, "duet:consent:accept:")
        preview = await alice.preview()
        assert fake.messages[notice["id"]]["content"].startswith("Thank you") and not custom_ids(fake.messages[notice["id"]])

        card = preview["embeds"][0]
        assert "🔵 A: Hi, I am Grace." in card["description"] and "🟠 B: Hello Grace" in card["description"]
        assert "Bella" in card["description"] and "hangar" in card["description"]
        assert card["image"]["url"] == "attachment://preview.jpg"
        assert preview["content"] == f"<@{alice.user.id}>"
        assert fake.calls(lambda c: c.route == ROUTE_CREATE_MESSAGE and c.params.get("embeds"))[0].params["allowed_mentions"] == {"parse": []}
        assert [c.split(":")[2] for c in custom_ids(preview)] == ["render", "edit", "discard"]

        job_id, status = await alice.render(preview, service)
        assert fake.messages[preview["id"]]["components"] == [], "Render takes the buttons off the card"
        job = await service.queue.get(job_id)
        assert (job.spec.inputs.voices.a, job.spec.inputs.scene) == ("af_bella", "Two pioneers in a hangar")
        assert job.spec.requester.reply_to_message_id == preview["id"]
        assert custom_ids(status) == [f"duet:job:cancel:{job_id}"]

        claimed, token = await engine.claim()
        await engine.progress(claimed, token, "render", 0.5, "20/40")
        await watcher.tick()
        edit = await fake.wait_for_call(edits_of(fake, status["id"], "animating 20/40"))
        assert "▰" in edit.params["content"]

        await engine.complete(claimed, token, mp4)
        await watcher.tick()
        await watcher.tick()

    (video,) = video_posts(fake)
    assert video.file("files[0]").data == mp4
    assert video.params["content"].startswith(f"<@{alice.user.id}> ") and "AI-generated" in video.params["content"]
    assert video.params["allowed_mentions"] == {"parse": [], "users": [int(alice.user.id)]}  # nobody else, no reply ping
    assert str(video.params["message_reference"]["message_id"]) == preview["id"]
    delivered = await service.queue.get(job_id)
    assert delivered.delivery_state == "delivered"
    assert custom_ids(fake.messages[delivered.delivered_message_id]) == [f"duet:job:reroll:{job_id}"]
    final = fake.messages[status["id"]]
    assert final["content"].startswith("Done!") and final["components"] == []


async def test_without_a_script_the_modal_asks_for_it_with_line_breaks(fake_discord: FakeDiscord, service: BotService) -> None:
    fake = fake_discord
    alice = DiscordUser(fake)
    await consented(service, fake)
    async with running_bot(fake, service):
        asked = await alice.talk()
        modal = await fake.wait_for_response(asked)
        assert modal["type"] == 9
        inputs = modal_inputs(modal)
        assert inputs["duet:script"]["style"] == 2 and inputs["duet:scene"]["required"] is False
        assert inputs["duet:script"]["max_length"] == service.settings.limits.max_script_chars
        submitted = await fake.submit_modal(asked, {"duet:script": SCRIPT})
        await alice.answer(submitted, "preview is below")
        preview = await alice.preview()
        job_id, _ = await alice.render(preview, service)

    job = await service.queue.get(job_id)
    assert [line.speaker for line in job.spec.inputs.dialogue] == ["A", "B", "A", "B"]


async def test_script_file_and_edit_make_a_new_preview(fake_discord: FakeDiscord, service: BotService) -> None:
    fake = fake_discord
    alice = DiscordUser(fake)
    await consented(service, fake)
    script_file = fake.upload_attachment("script.txt", SCRIPT.encode("utf-8"), content_type="text/plain")
    async with running_bot(fake, service):
        first = await alice.make_preview(script=None, script_file=script_file)
        assert first["embeds"][0]["description"].count("\n🔵 A:") + first["embeds"][0]["description"].count("\n🟠 B:") == 4
        edit = await alice.press(first, "duet:draft:edit:")
        modal = await fake.wait_for_response(edit)
        assert modal_inputs(modal)["duet:script"]["value"].strip() == SCRIPT.strip()
        new_values = {"duet:script": "A: Shorter now.\nB: Much shorter.", "duet:scene": "A rooftop at dusk"}
        submitted = await fake.submit_modal(edit, new_values)
        await alice.answer(submitted, "preview is below")
        second = await alice.preview(after=first["id"])
        job_id, _ = await alice.render(second, service)

    assert fake.messages[first["id"]]["components"] == [], "the superseded card loses its buttons"
    job = await service.queue.get(job_id)
    assert [line.text for line in job.spec.inputs.dialogue] == ["Shorter now.", "Much shorter."]
    assert job.spec.inputs.scene == "A rooftop at dusk"


async def test_cancel_on_the_preview_drops_the_draft_and_its_photos(fake_discord: FakeDiscord, service: BotService) -> None:
    fake = fake_discord
    alice = DiscordUser(fake)
    await consented(service, fake)
    async with running_bot(fake, service):
        preview = await alice.make_preview()
        draft_id = custom_ids(preview)[0].rsplit(":", 1)[1]
        pressed = await alice.press(preview, "duet:draft:discard:")
        assert (await fake.wait_for_response(pressed))["type"] == 7

    card = fake.messages[preview["id"]]
    assert card["content"].startswith("Stopped. Nothing was rendered")
    assert (card["attachments"], card["embeds"], card["components"]) == ([], [], [])
    with pytest.raises(DraftNotFound):
        await service.drafts.get(draft_id)
    assert await service.queue.list_jobs() == []


async def test_cancel_while_queued_and_while_running_by_button_and_command(
    fake_discord: FakeDiscord, service: BotService
) -> None:
    fake = fake_discord
    alice = DiscordUser(fake)
    engine = FakeEngine(service)
    await consented(service, fake)
    async with running_bot(fake, service) as watcher:
        queued, status = await alice.render(await alice.make_preview(), service)
        pressed = await alice.press(status, "duet:job:cancel:")
        await alice.answer(pressed, f"Job {queued} is cancelled")
        await watcher.tick()
        await fake.wait_for_call(edits_of(fake, status["id"], "Cancelled."))
        assert fake.messages[status["id"]]["components"] == []

        running, status = await alice.render(await alice.make_preview(), service)
        claimed, token = await engine.claim()
        asked = await alice.command("cancel", job=running)
        await alice.answer(asked, f"Stopping job {running}")
        assert (await service.queue.get(running)).cancel_requested
        await service.queue.finish_cancelled(claimed.id, token)
        await watcher.tick()
        await fake.wait_for_call(edits_of(fake, status["id"], f"Cancelled. Job {running}"))

        newest, _ = await alice.render(await alice.make_preview(), service)
        asked = await alice.command("cancel")
        await alice.answer(asked, f"Job {newest} is cancelled")

        running, status = await alice.render(await alice.make_preview(), service)
        claimed, token = await engine.claim()
        pressed = await alice.press(status, "duet:job:cancel:")
        await alice.answer(pressed, f"Stopping job {running}")

    states = [(await service.queue.get(j)).state for j in (queued, newest)]
    assert states == [JobState.CANCELLED, JobState.CANCELLED]
    assert (await service.queue.get(running)).cancel_requested


async def test_someone_elses_job_cannot_be_cancelled(fake_discord: FakeDiscord, service: BotService) -> None:
    fake = fake_discord
    alice, mallory = DiscordUser(fake), DiscordUser(fake, fake.add_user("mallory"))
    await consented(service, fake)
    async with running_bot(fake, service):
        preview = await alice.make_preview()
        pressed = await mallory.press(preview, "duet:draft:render:")
        await mallory.answer(pressed, "Only the person who asked")
        job_id, status = await alice.render(preview, service)
        pressed = await mallory.press(status, "duet:job:cancel:")
        refusal = await mallory.answer(pressed, "Only the person who asked")
        assert refusal["flags"] & 64, "refusals are ephemeral"
        asked = await mallory.command("cancel", job=job_id)
        await mallory.answer(asked, f"No job {job_id} was found")
        asked = await mallory.command("show", job=job_id)
        await mallory.answer(asked, "No job")
        asked = await mallory.command("cancel")
        await mallory.answer(asked, "no video in progress")
        offered = {}
        for who in (alice, mallory):
            typing = await fake.autocomplete("cancel", {"job": job_id[:4]}, focused="job", user=who.user)
            offered[who.user.username] = [c["value"] for c in (await fake.wait_for_response(typing))["data"]["choices"]]
        assert offered == {"alice": [job_id], "mallory": []}, "job ids are suggested to their owner only"

    job = await service.queue.get(job_id)
    assert job.state == JobState.QUEUED and not job.cancel_requested


async def test_reroll_makes_a_new_job_with_the_same_inputs_and_a_new_seed(
    fake_discord: FakeDiscord, service: BotService
) -> None:
    fake = fake_discord
    alice = DiscordUser(fake)
    engine = FakeEngine(service)
    await consented(service, fake)
    async with running_bot(fake, service) as watcher:
        first, _ = await alice.render(await alice.make_preview(), service)
        claimed, token = await engine.claim()
        await engine.complete(claimed, token, make_mp4(0.5))
        await watcher.tick()
        video = fake.messages[(await service.queue.get(first)).delivered_message_id]
        pressed = await alice.press(video, "duet:job:reroll:")
        answer = await alice.answer(pressed, "Queued as job")
        second = answer["content"].split("job ", 1)[1].split(".")[0]
        status = await alice.channel_message(
            lambda m: m.get("message_reference", {}).get("message_id") == video["id"] and m["content"].startswith("Queued")
        )
        shown = await alice.answer(await alice.command("show", job=first), "Done!")
        assert custom_ids(shown) == [f"duet:job:reroll:{first}"]
        listed = await alice.answer(await alice.command("jobs"), "Your videos")
        assert listed["content"].index(second) < listed["content"].index(first), "newest first"

    old, new = (await service.queue.get(first)), (await service.queue.get(second))
    assert new.spec.reroll_of == first and new.spec.inputs == old.spec.inputs
    assert new.spec.render.seed != old.spec.render.seed
    assert new.spec.requester.reply_to_message_id == video["id"]
    assert new.status_message_id == status["id"]


async def test_restart_mid_job_keeps_buttons_resumes_the_status_and_delivers_once(
    fake_discord: FakeDiscord, service: BotService
) -> None:
    fake = fake_discord
    alice, mallory = DiscordUser(fake), DiscordUser(fake, fake.add_user("mallory"))
    engine = FakeEngine(service)
    await consented(service, fake)
    async with running_bot(fake, service) as watcher:
        job_id, status = await alice.render(await alice.make_preview(), service)
        claimed, token = await engine.claim()
        await engine.progress(claimed, token, "render", 0.25, "10/40")
        await watcher.tick()
        await fake.wait_for_call(edits_of(fake, status["id"], "10/40"))
    # The bot process is gone; the engine keeps rendering. A new process starts.
    service = restart(service)
    async with running_bot(fake, service) as watcher:
        await engine.progress(claimed, token, "render", 0.75, "30/40")
        await watcher.tick()
        await fake.wait_for_call(edits_of(fake, status["id"], "30/40"))
        pressed = await mallory.press(status, "duet:job:cancel:")  # the old message's button still answers
        await mallory.answer(pressed, "Only the person who asked")
        await engine.complete(claimed, token, make_mp4(0.5))
        await watcher.tick()
        await watcher.tick()
    service = restart(service)
    async with running_bot(fake, service) as watcher:
        await watcher.tick()
        video = fake.messages[(await service.queue.get(job_id)).delivered_message_id]
        pressed = await alice.press(video, "duet:job:reroll:")  # posted by the previous process
        await alice.answer(pressed, "Queued as job")

    assert len(video_posts(fake)) == 1
    assert len(fake.gateway.identifies) == 3
    assert (await service.queue.get(job_id)).delivery_state == "delivered"
    working_posts = [c for c in fake.calls(ROUTE_CREATE_MESSAGE) if (c.params.get("content") or "").startswith("Working")]
    assert not working_posts, "the status message was edited after the restart, not posted again"
