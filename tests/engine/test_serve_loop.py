"""The serve loop's decisions, in one process: rank 0's loop with a real SQLite queue and a stand-in pipeline.

The multi-process behaviour is in test_serve.py; here each way a job can end is driven directly and quickly:
out of memory, a refused job, a damaged input, the time limit, a drain request, SIGTERM without a supervisor,
and the crash breaker's arithmetic.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bot.core.submit import Draft, enqueue, prepare
from engine import serve
from engine.leader import Leader, StopCode
from engine.parallel.control import ControlChannel
from engine.parallel.groups import ProcessGroups
from engine.sampling import RenderCancelled
from engine.serve import RankOutcome, group_is_sound
from engine.supervisor import CrashBreaker, Supervisor
from storage import admin
from storage.cli import run_action
from storage.contract import Requester
from storage.errors import DuetError
from storage.settings import load_settings

SAMPLES = Path(__file__).resolve().parents[2] / "bot" / "samples"
SINGLE = ProcessGroups(0, 1, 0, torch.device("cpu"), None, None, None)


class StandInPipeline:
    """Steps that ask the gate and report progress, then either fail with `error` or write a small file."""

    def __init__(self, steps: int = 5, step_s: float = 0.0, error: BaseException | None = None) -> None:
        self.steps, self.step_s, self.error = steps, step_s, error
        self.renders = 0

    def render(self, request, *, on_progress, is_cancel_requested):
        self.renders += 1
        for i in range(self.steps):
            if is_cancel_requested():
                raise RenderCancelled(i, self.steps)
            time.sleep(self.step_s)
            on_progress("render", i + 1, self.steps)
        if self.error is not None:
            raise self.error
        path = request.work_dir / "result.mp4"
        path.write_bytes(b"not really an mp4")
        return SimpleNamespace(video_path=path, fitted_path=None, duration_s=1.0, width=64, height=64, timings=())


@pytest.fixture
def config(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "bot_config.toml"
    path.write_text(f"""
[storage]
database_url = "sqlite+aiosqlite:///{tmp_path / 'duet.db'}"
media_dir = "{tmp_path / 'media'}"
[queue]
lease_s = 5.0
heartbeat_s = 0.2
reaper_interval_s = 0.5
poll_interval_s = 0.1
retry_backoff_s = 0.0
max_active_per_user = 20
""")
    monkeypatch.setattr(serve, "make_request", lambda assignment, work_dir, rank: SimpleNamespace(work_dir=work_dir))
    return path


def query(config: Path, action):
    return run_action(load_settings(config), action)


@pytest.fixture(scope="module")
def prepared():
    draft = Draft(
        requester=Requester(platform="cli", user_id="tester", chat_id="local"),
        photo_a=(SAMPLES / "grace_hopper.jpg").read_bytes(), photo_b=(SAMPLES / "astronaut.png").read_bytes(),
        script="A: Hi.\nB: Hello.", seed=1, quality="480p",
    )  # fmt: skip
    return prepare(draft, load_settings(None))


def submit(config: Path, prepared) -> str:
    return query(config, lambda s: enqueue(prepared, s.queue, s.media)).job_id


def run_leader(config: Path, pipeline, *, once: bool = True, time_limit_s: float = 60.0, requeue_on_signal: bool = True,
               during=None, job_id: str | None = None) -> tuple[int, Leader]:  # fmt: skip
    """Rank 0's loop until it returns; `during(leader)` runs on a side thread meanwhile."""
    leader = Leader(load_settings(config), "loop-test", time_limit_s=time_limit_s,
                    requeue_on_signal=requeue_on_signal, info={"world_size": 1}, job_id=job_id)  # fmt: skip
    leader.start()
    side = threading.Thread(target=during, args=(leader,)) if during else None
    try:
        if side:
            side.start()
        code = serve.lead(pipeline, ControlChannel(SINGLE), leader, load_settings(config), once=once,
                          sample_shift=None)  # fmt: skip
    finally:
        if side:
            side.join(30)
        leader.close()
    return code, leader


def job(config: Path, job_id: str):
    return query(config, lambda s: s.queue.get(job_id))


def wait_until(condition, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_a_job_succeeds_with_progress_and_result(config, prepared):
    job_id = submit(config, prepared)
    code, _ = run_leader(config, StandInPipeline(steps=3))
    record = job(config, job_id)
    assert code == 0 and record.state == "succeeded"
    assert record.result.video.role == "result" and record.result.width == 64
    stages = [e.detail for e in query(config, lambda s: s.queue.events(job_id)) if e.kind == "stage"]
    assert stages == ["render"]


def test_out_of_memory_fails_for_good_with_a_user_message(config, prepared):
    job_id = submit(config, prepared)
    run_leader(config, StandInPipeline(steps=2, error=torch.OutOfMemoryError("CUDA out of memory")))
    record = job(config, job_id)
    assert record.state == "failed"  # not queued again although attempts (1) < max_attempts (3)
    assert "GPU memory" in record.error_user and "OutOfMemoryError" in record.error_admin


def test_a_refused_job_fails_for_good_and_a_crash_like_error_is_retried(config, prepared):
    refused, flaky = submit(config, prepared), submit(config, prepared)
    run_leader(config, StandInPipeline(steps=1, error=DuetError("The dialogue is too long.", "61 s > 60 s")))
    run_leader(config, StandInPipeline(steps=1, error=RuntimeError("driver hiccup")))
    assert (job(config, refused).state, job(config, refused).error_user) == ("failed", "The dialogue is too long.")
    assert job(config, flaky).state == "queued" and "driver hiccup" in job(config, flaky).error_admin


def test_a_damaged_frame_fails_the_job_without_rendering(config, prepared):
    job_id = submit(config, prepared)
    frame = Path(load_settings(config).storage.media_dir) / job_id / "frame.png"
    frame.write_bytes(b"tampered")
    pipeline = StandInPipeline()
    code, _ = run_leader(config, pipeline, once=False, during=lambda leader: (
        wait_until(lambda: job(config, job_id).state == "failed"), leader.request_shutdown(signal.SIGTERM)))
    assert code == 0 and pipeline.renders == 0
    assert "damaged" in job(config, job_id).error_user


def test_the_time_limit_stops_the_job_at_a_step_boundary(config, prepared):
    job_id = submit(config, prepared)
    pipeline = StandInPipeline(steps=200, step_s=0.02)
    run_leader(config, pipeline, time_limit_s=0.5)
    record = job(config, job_id)
    assert record.state == "failed" and record.error_admin.endswith("per-job time limit reached")
    assert int(record.progress_detail.split("/")[0]) < 200


def test_a_drain_request_finishes_the_current_job_then_stops(config, prepared):
    first, second = submit(config, prepared), submit(config, prepared)

    def drain(leader):
        wait_until(lambda: job(config, first).stage == "render")
        query(config, lambda s: admin.request_drain(s.queue, "loop-test"))

    code, leader = run_leader(config, StandInPipeline(steps=20, step_s=0.1), once=False, during=drain)
    assert code == 0 and leader.drain_requested
    assert job(config, first).state == "succeeded" and job(config, second).state == "queued"
    workers = query(config, lambda s: admin.list_workers(s.queue))
    assert [w["state"] for w in workers] == ["stopped"]


def test_sigterm_without_a_supervisor_requeues_at_once_without_charging(config, prepared):
    job_id = submit(config, prepared)
    requeued_after = []

    def terminate(leader):
        wait_until(lambda: job(config, job_id).stage == "render")
        started = time.monotonic()
        leader.request_shutdown(signal.SIGTERM)
        wait_until(lambda: job(config, job_id).state == "queued")
        requeued_after.append(time.monotonic() - started)

    code, _ = run_leader(config, StandInPipeline(steps=100, step_s=0.05), once=False, during=terminate)
    record = job(config, job_id)
    assert code == 0 and record.attempts == 0 and record.shutdown_requeues == 1
    assert requeued_after[0] < 5


def test_cancel_reaches_the_step_gate(config, prepared):
    job_id = submit(config, prepared)

    def cancel(leader):
        wait_until(lambda: job(config, job_id).stage == "render")
        query(config, lambda s: s.queue.cancel(job_id, actor="admin", is_admin=True))

    run_leader(config, StandInPipeline(steps=100, step_s=0.05), during=cancel)
    assert job(config, job_id).state == "cancelled"


def test_an_engine_for_one_job_renders_it_and_leaves_older_jobs_queued(config, prepared):
    older, mine = submit(config, prepared), submit(config, prepared)
    pipeline = StandInPipeline(steps=2)
    code, _ = run_leader(config, pipeline, job_id=mine)
    assert code == 0 and pipeline.renders == 1
    assert (job(config, mine).state, job(config, older).state) == ("succeeded", "queued")
    assert job(config, mine).lease_owner is None and job(config, older).attempts == 0


def test_an_engine_for_one_job_waits_while_claims_are_paused(config, prepared):
    job_id = submit(config, prepared)
    query(config, lambda s: s.queue.set_paused(claims=True))

    seen_while_paused = []

    def resume(leader):
        wait_until(lambda: query(config, lambda s: admin.list_workers(s.queue)))
        time.sleep(0.5)  # several polls (every 0.1 s) that must not take the job
        seen_while_paused.append(job(config, job_id).state)
        query(config, lambda s: s.queue.set_paused(claims=False))

    code, _ = run_leader(config, StandInPipeline(steps=1), job_id=job_id, during=resume)
    assert seen_while_paused == ["queued"]
    assert code == 0 and job(config, job_id).state == "succeeded"


def test_an_engine_for_one_job_takes_it_back_once_its_crashed_predecessors_lease_runs_out(config, prepared):
    """Under the supervisor, a restarted group keeps the worker name: the job it held is not "taken"."""
    job_id = submit(config, prepared)
    query(config, lambda s: s.queue.claim("loop-test", job_id=job_id))  # the group that crashed (5 s lease)
    code, _ = run_leader(config, StandInPipeline(steps=1), job_id=job_id)
    record = job(config, job_id)
    assert code == 0 and (record.state, record.attempts) == ("succeeded", 2)
    assert "reaped" in [e.kind for e in query(config, lambda s: s.queue.events(job_id))]


@pytest.mark.parametrize("fate", ["cancelled", "taken", "unknown"])
def test_an_engine_for_one_job_stops_when_the_job_is_out_of_reach(config, prepared, fate, caplog):
    job_id = submit(config, prepared)
    query(config, lambda s: s.queue.set_paused(claims=True))
    if fate == "cancelled":
        query(config, lambda s: s.queue.cancel(job_id, actor="admin", is_admin=True))
    elif fate == "taken":
        query(config, lambda s: s.queue.set_paused(claims=False))
        query(config, lambda s: s.queue.claim("other-engine", job_id=job_id))
    pipeline = StandInPipeline()
    with caplog.at_level("INFO", logger="engine.serve"):
        code, _ = run_leader(config, pipeline, job_id=job_id if fate != "unknown" else "no-such-job")
    assert code == 0 and pipeline.renders == 0
    reason = {"cancelled": "cancelled already", "taken": "taken by worker other-engine",
              "unknown": "not in the queue"}[fate]  # fmt: skip
    assert f"is {reason}: nothing to render here" in caplog.text


def test_ranks_that_end_a_job_differently_mean_the_group_restarts():
    ok, stopped = RankOutcome("ok"), RankOutcome("stopped", detail="CANCELLED")
    same_error = [RankOutcome("error", "x", "boom"), RankOutcome("error", "x", "boom")]
    assert group_is_sound([ok, ok]) and group_is_sound([stopped, stopped]) and group_is_sound(same_error)
    assert not group_is_sound([ok, RankOutcome("error", "x", "rank 1 died")])
    assert not group_is_sound([RankOutcome("error", "x", "a"), RankOutcome("error", "x", "b")])
    assert StopCode(0) == StopCode.GO_ON


def test_crash_breaker_needs_several_jobs_within_the_window():
    now = [0.0]
    breaker = CrashBreaker(max_crashes=3, min_jobs=2, window_s=600, clock=lambda: now[0])
    assert not breaker.record("poison") and not breaker.record("poison")
    assert not breaker.record("poison")  # one bad job: its own attempts handle it
    now[0] = 700.0  # the old crashes leave the window
    assert not breaker.record("a") and not breaker.record("b")
    assert breaker.record("a")  # 3 crashes on 2 jobs within 10 minutes: the machine is suspect
    assert "a, b" in breaker.describe()


def test_supervisor_restarts_a_crashing_group_and_the_breaker_pauses_claims(config):
    settings = load_settings(config)
    query(config, lambda s: s.queue.paused())  # create the database
    supervisor = Supervisor(settings, [sys.executable, "-c", "raise SystemExit(1)"], "crashy",
                            CrashBreaker(max_crashes=2, min_jobs=0))  # fmt: skip
    exit_codes = []
    runner = threading.Thread(target=lambda: exit_codes.append(supervisor.run()))
    runner.start()
    try:
        wait_until(lambda: query(config, lambda s: s.queue.paused())["claims"], timeout_s=30)
    finally:
        supervisor.stop(signal.SIGTERM)
        runner.join(30)
    assert exit_codes == [0] and len(supervisor.breaker.crashes) >= 2


def test_the_engines_sample_shift_fills_in_only_jobs_without_one(prepared):
    from storage.contract import JobSpec

    spec = JobSpec(requester=prepared.draft.requester, inputs=_inputs(prepared), render=prepared.render)
    assert JobSpec.from_json(serve.with_engine_defaults(spec, 3.0)).render.sample_shift == 3.0
    chosen = spec.model_copy(update={"render": spec.render.model_copy(update={"sample_shift": 9.0})})
    assert JobSpec.from_json(serve.with_engine_defaults(chosen, 3.0)).render.sample_shift == 9.0
    assert JobSpec.from_json(serve.with_engine_defaults(spec, None)).render.sample_shift is None


def _inputs(prepared):
    from storage.contract import Inputs, Line, MediaRef

    ref = {"size_bytes": 1, "sha256": "0" * 64}
    return Inputs(photo_a=MediaRef(role="photo_a", **ref), photo_b=MediaRef(role="photo_b", **ref),
                  dialogue=tuple(Line(speaker=line.speaker, text=line.text) for line in prepared.dialogue.lines))


STUBBORN_GROUP = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
rank = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                         "time.sleep(600)"], start_new_session=True)  # as torchrun starts its ranks
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {rank.pid}")
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(600)
"""


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has exited
    except FileNotFoundError:
        return True


def test_a_group_that_ignores_sigterm_is_killed_with_its_ranks_after_the_grace(config, tmp_path, monkeypatch):
    """torchrun starts each rank in a session of its own: killing torchrun's process group alone would orphan them."""
    from engine import supervisor as supervisor_module

    monkeypatch.setattr(supervisor_module, "STOP_GRACE_S", 1.0)
    settings = load_settings(config)
    query(config, lambda s: s.queue.paused())  # create the database
    pids_file = tmp_path / "pids"
    supervisor = Supervisor(settings, [sys.executable, "-c", STUBBORN_GROUP, str(pids_file)], "stubborn",
                            CrashBreaker())  # fmt: skip
    exit_codes = []
    runner = threading.Thread(target=lambda: exit_codes.append(supervisor.run()))
    runner.start()
    wait_until(pids_file.exists, timeout_s=30)
    group_pid, rank_pid = map(int, pids_file.read_text().split())
    assert supervisor_module.descendants(group_pid) == [rank_pid]
    supervisor.stop(signal.SIGTERM)
    runner.join(30)
    assert exit_codes == [0]
    wait_until(lambda: _gone(group_pid) and _gone(rank_pid), timeout_s=10)
