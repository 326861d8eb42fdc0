"""Status texts, the progress bar, ETA from measured throughput, the text catalog and button ids."""

from __future__ import annotations

import pytest
from chat_helpers import FakeEngine, make_mp4, open_service, queue_sample_job

from bot.core.actions import Action, Verb, parse_action, preview_actions
from bot.core.errors import LOCALES, template_fields
from bot.core.service import BotService
from bot.core.status import JobStatus, Throughput, measure_throughput, progress_bar, status_actions, status_text
from bot.core.texts import TEXTS, duration_text
from storage.contract import JobState, Requester
from storage.settings import Settings


def status(state: JobState, **fields) -> JobStatus:
    base = dict(
        job_id="J1",
        state=state,
        stage=None,
        progress=0.0,
        detail=None,
        position=None,
        eta_s=None,
        cancel_requested=False,
        attempts=0,
        error_user=None,
    )
    return JobStatus(**(base | fields))


def test_progress_bar_fills_by_fraction() -> None:
    assert progress_bar(0.0) == "▱" * 12 + " 0%"
    assert progress_bar(0.5) == "▰" * 6 + "▱" * 6 + " 50%"
    assert progress_bar(1.7) == "▰" * 12 + " 100%"


def test_overall_progress_counts_finished_stages() -> None:
    halfway_render = status(JobState.RUNNING, stage="render", progress=0.5)
    assert halfway_render.overall_progress == pytest.approx(0.12 + 0.4)
    assert status(JobState.RUNNING, stage="mux", progress=1.0).overall_progress == pytest.approx(1.0)
    assert status(JobState.QUEUED).overall_progress == 0.0


def test_status_text_in_english_and_chinese() -> None:
    queued = status(JobState.QUEUED, position=3, eta_s=630)
    expected = ["Queued — position 3", progress_bar(0), "ready in about 10 min", "Job J1"]
    assert status_text(queued, "en").splitlines() == expected
    assert status_text(queued, "zh-CN").splitlines()[0] == "排队中 — 第 3 位"
    assert "10 分钟" in status_text(queued, "zh")
    running = status(JobState.RUNNING, stage="render", progress=0.25, detail="10/40", eta_s=45)
    assert status_text(running, "en").startswith("Working — animating 10/40\n▰▰▰▰")
    assert "45 s" in status_text(running, "en")
    assert status_text(status(JobState.QUEUED, attempts=1), "en").startswith("Queued again after a problem (attempt 2)")
    failed = status(JobState.FAILED, error_user="The render stopped unexpectedly.")
    assert "The render stopped unexpectedly." in status_text(failed, "en") and "J1" in status_text(failed, "en")
    assert "渲染服务出错" in status_text(failed, "zh") and "J1" in status_text(failed, "zh")
    assert status_text(status(JobState.CANCELLED), "en") == "Cancelled. Job J1."
    assert "ready in" not in status_text(status(JobState.QUEUED, position=1), "en")


def test_cancel_is_offered_only_while_it_can_still_stop_the_job() -> None:
    assert status_actions(status(JobState.QUEUED)) == (Action(Verb.CANCEL, "J1"),)
    assert status_actions(status(JobState.RUNNING, cancel_requested=True)) == ()
    assert status_actions(status(JobState.SUCCEEDED)) == ()


def test_durations_read_like_a_person_says_them() -> None:
    assert [duration_text(s, "en") for s in (0.2, 59, 61, 3600, 4500)] == ["1 s", "59 s", "1 min", "1 h", "1 h 15 min"]
    assert duration_text(4500, "zh") == "1 小时 15 分钟"


def test_every_text_exists_in_both_languages_with_the_same_placeholders() -> None:
    for key, templates in TEXTS.items():
        assert set(templates) == set(LOCALES), key
        assert template_fields(templates["en"]) == template_fields(templates["zh"]), key


def test_button_ids_round_trip_fit_telegram_and_reject_strangers() -> None:
    job = "0b6e4a8e-6f1c-4c1a-9b1e-2f5d3c4a5b6c"
    for action in (*preview_actions("9" * 32), Action(Verb.CANCEL, job), Action(Verb.REROLL, job), Action(Verb.ACCEPT, "-")):
        assert parse_action(action.custom_id) == action
        assert len(action.custom_id.encode()) <= 64  # Telegram callback_data
    strangers = ("duet:job:render:x", "duet:draft:cancel:x", "duet:job:explode:x", "other:job:cancel:x", "duet:job:cancel:../../x")
    for stranger in (*strangers, ""):
        assert parse_action(stranger) is None, stranger


async def test_eta_comes_from_measured_throughput(tmp_path) -> None:
    service = await open_service(tmp_path, Settings())
    try:
        assert (await measure_throughput(service.queue)).job_seconds(10.0) is None, "nothing measured: no ETA"
        engine = FakeEngine(service)
        requester = Requester(platform="telegram", user_id="1", chat_id="1")
        job_ids = [await queue_sample_job(service, requester) for _ in range(2)]
        job, token = await engine.claim()
        await engine.complete(job, token, make_mp4(0.5), seconds=0.5)
        throughput = await measure_throughput(service.queue)
        row = await service.queue.get(job.id)
        ratio = (row.finished_at - row.started_at) / 0.5
        assert throughput.render_s_per_video_s == pytest.approx(ratio)
        assert throughput.queued_jobs == 1
        fresh = BotService(service.settings, service.queue, service.media, service.drafts, throughput_ttl_s=0.0)
        waiting = await fresh.status(await service.queue.get(job_ids[1]))
        assert waiting.position == 1 and waiting.eta_s is not None and waiting.eta_s > 0
        assert Throughput(render_s_per_video_s=20.0, job_p50_s=100.0).job_seconds(12.0) == 240.0
    finally:
        await service.queue.db.dispose()
