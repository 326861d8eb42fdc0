"""BotService: consent, ownership (someone else's job or draft is simply not found), the admin allow-list,
idempotent submission, the queue's refusals in the user's language, re-roll, and drafts on disk."""

from __future__ import annotations

import pytest
from chat_helpers import PHOTO_A, PHOTO_B, SCRIPT, open_service, queue_sample_job

from bot.core.drafts import DraftNotFound, DraftStore
from bot.core.photos import PhotoTooLargeError
from bot.core.script import SingleSpeakerError
from bot.core.service import Actor, BotService, ConsentRequired, RerollInputsGone
from bot.core.texts import error_text
from storage.contract import JobState, Requester
from storage.errors import JobNotFound, SubmitRefused
from storage.settings import DiscordSettings, QueueSettings, Settings, TelegramSettings

ALICE = Actor("telegram", "1001", "en")
BOB = Actor("telegram", "2002", "zh")
ADMIN = Actor("telegram", "9009")


def requester(actor: Actor) -> Requester:
    return Requester(platform=actor.platform, user_id=actor.user_id, chat_id=actor.user_id, locale=actor.locale)


@pytest.fixture
async def service(tmp_path):
    settings = Settings(
        queue=QueueSettings(max_active_per_user=2),
        telegram=TelegramSettings(admin_ids=("9009",)),
        discord=DiscordSettings(admin_ids=("1001",)),
    )
    service = await open_service(tmp_path, settings)
    yield service
    await service.queue.db.dispose()


async def complete_draft(service: BotService, actor: Actor = ALICE) -> str:
    draft = await service.start_draft(requester(actor))
    await service.add_photo(draft.id, "A", PHOTO_A)
    await service.add_photo(draft.id, "B", PHOTO_B)
    await service.set_script(draft.id, SCRIPT.encode("utf-16"))  # a file in another encoding
    return draft.id


async def test_submission_needs_consent_and_is_idempotent_per_draft(service: BotService) -> None:
    draft_id = await complete_draft(service)
    with pytest.raises(ConsentRequired):
        await service.submit_draft(draft_id, ALICE)
    assert await service.queue.list_jobs() == []
    await service.record_consent(ALICE)
    first = await service.submit_draft(draft_id, ALICE)
    again = await service.submit_draft(draft_id, ALICE)  # a double press, or a redelivered update
    assert first.created and not again.created and again.job_id == first.job_id
    assert first.status.state == JobState.QUEUED and first.status.position == 1
    assert len(await service.queue.list_jobs()) == 1


async def test_someone_elses_draft_and_job_are_not_found(service: BotService) -> None:
    draft_id = await complete_draft(service)
    with pytest.raises(DraftNotFound):
        await service.submit_draft(draft_id, BOB)
    with pytest.raises(DraftNotFound):
        await service.discard_draft(draft_id, BOB)
    await service.record_consent(ALICE)
    job_id = (await service.submit_draft(draft_id, ALICE)).job_id
    with pytest.raises(JobNotFound):
        await service.cancel(job_id, BOB)
    with pytest.raises(JobNotFound):
        await service.job(job_id, BOB)
    with pytest.raises(JobNotFound):
        await service.reroll(job_id, BOB, requester(BOB), idempotency_key="k")
    with pytest.raises(JobNotFound):
        await service.job("' OR 1=1 --", ALICE)
    assert (await service.queue.get(job_id)).state == JobState.QUEUED
    assert await service.list_jobs(BOB) == []


async def test_admins_come_from_the_config_allow_list_of_their_platform(service: BotService) -> None:
    assert service.is_admin(ADMIN)
    assert not service.is_admin(Actor("discord", "9009")), "a Telegram admin id means nothing on Discord"
    assert service.is_admin(Actor("discord", "1001")) and not service.is_admin(ALICE)
    await service.record_consent(ALICE)
    job_id = (await service.submit_draft(await complete_draft(service), ALICE)).job_id
    status = await service.cancel(job_id, ADMIN)
    assert status.state == JobState.CANCELLED
    assert (await service.queue.events(job_id))[-1].actor == "telegram:9009"


async def test_queue_refusals_reach_the_user_in_their_language(service: BotService) -> None:
    await service.record_consent(ALICE)
    for _ in range(2):
        await queue_sample_job(service, requester(ALICE))
    with pytest.raises(SubmitRefused) as refused:
        await service.submit_draft(await complete_draft(service), ALICE)
    assert refused.value.reason == "user_limit"
    assert "already have" in error_text(refused.value, "en")
    assert "已达上限" in error_text(refused.value, "zh-hans")
    cooldown = SubmitRefused("cooldown", "Please wait 7 s before your next video.")
    assert error_text(cooldown, "en").endswith("7 s before your next video.")
    assert "稍等" in error_text(SubmitRefused("cooldown", "Please wait 7 s."), "zh")


async def test_cancel_latest_takes_the_newest_active_job(service: BotService) -> None:
    assert await service.cancel_latest(ALICE) is None
    await service.record_consent(ALICE)
    older = await queue_sample_job(service, requester(ALICE))
    newer = await queue_sample_job(service, requester(ALICE))
    status = await service.cancel_latest(ALICE)
    assert status is not None and status.job_id == newer and status.state == JobState.CANCELLED
    assert (await service.queue.get(older)).state == JobState.QUEUED


async def test_reroll_of_a_job_whose_photos_were_removed_says_so(service: BotService) -> None:
    await service.record_consent(ALICE)
    job_id = (await service.submit_draft(await complete_draft(service), ALICE)).job_id
    await service.queue.cancel(job_id, actor=ALICE.owner_key)
    rerolled = await service.reroll(job_id, ALICE, requester(ALICE), idempotency_key="telegram:update:1")
    assert rerolled.created and (await service.queue.get(rerolled.job_id)).spec.reroll_of == job_id
    await service.media.remove_roles(job_id, ("photo_a", "photo_b", "frame"))
    await service.queue.cancel(rerolled.job_id, actor=ALICE.owner_key)
    with pytest.raises(RerollInputsGone):
        await service.reroll(job_id, ALICE, requester(ALICE), idempotency_key="telegram:update:2")
    assert len(await service.queue.list_jobs()) == 2, "nothing was queued"
    assert not service.media.path(job_id, "photo_a").exists()


async def test_inputs_are_checked_as_they_arrive(service: BotService) -> None:
    draft = await service.start_draft(requester(ALICE))
    with pytest.raises(PhotoTooLargeError):
        service.check_photo_size(30 * 1024 * 1024, "A")
    with pytest.raises(SingleSpeakerError):
        await service.set_script(draft.id, "A: hello\nA: again")
    state = await service.add_photo(draft.id, "A", PHOTO_A)
    assert state.has_photo_a and not state.has_photo_b and state.script is None


async def test_drafts_survive_a_restart_and_old_ones_are_pruned(service: BotService, tmp_path) -> None:
    draft_id = await complete_draft(service)
    reopened = DraftStore(service.drafts.root)
    state = await reopened.get(draft_id)
    assert state.is_complete and state.requester.user_id == ALICE.user_id
    draft = await reopened.to_draft(state)
    assert draft.photo_a == PHOTO_A and draft.photo_b == PHOTO_B and "learned to talk" in draft.script
    assert await reopened.prune(older_than_s=3600) == []
    assert await reopened.prune(older_than_s=-1) == [draft_id]
    with pytest.raises(DraftNotFound):
        await reopened.get(draft_id)
    with pytest.raises(DraftNotFound):
        await reopened.get("../../etc")
