"""The render service as operators run it: a supervised torchrun group of 2 gloo ranks on the CPU, a real SQLite
queue, jobs submitted through the chat bots' validation, and the ways a long-lived service gets hurt.

Timings are test-lowered through a bot_config.toml per test (3 s leases, 0.5 s heartbeats and reaper) and
`--collective_timeout_s 3`; every wait is on a condition with a deadline.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import av
import psutil
import pytest

from bot.core.submit import Draft, enqueue, prepare
from storage import admin
from storage.cli import run_action
from storage.contract import JobState, Requester
from storage.queue import JobRecord
from storage.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "bot" / "samples"
FPS = 25

pytestmark = pytest.mark.slow


# ---- helpers ------------------------------------------------------------------------------------------------


def write_config(tmp_path: Path, *, max_attempts: int = 2) -> Path:
    path = tmp_path / "bot_config.toml"
    path.write_text(f"""
[storage]
database_url = "sqlite+aiosqlite:///{tmp_path / 'duet.db'}"
media_dir = "{tmp_path / 'media'}"
[queue]
lease_s = 3.0
heartbeat_s = 0.5
reaper_interval_s = 0.5
poll_interval_s = 0.2
retry_backoff_s = 0.0
max_attempts = {max_attempts}
max_active_per_user = 20
[render]
steps = 3
[engine]
preset = "tiny"
worker_name = "test-engine"
""")
    return path


def query(config: Path, action):
    """Run `action(services)` against the test's database, in a fresh event loop."""
    return run_action(load_settings(config), action)


def submit(config: Path, *, steps: int = 3, seed: int = 7, priority: int = 0) -> str:
    """A job for the sample photos and a two-line dialogue (about a second of speech: one render chunk)."""
    settings = load_settings(config)
    draft = Draft(
        requester=Requester(platform="cli", user_id="tester", chat_id="local"),
        photo_a=(SAMPLES / "grace_hopper.jpg").read_bytes(), photo_b=(SAMPLES / "astronaut.png").read_bytes(),
        script="A: Hello there.\nB: Hi!", seed=seed, quality="480p",
    )  # fmt: skip
    prepared = prepare(draft, settings)
    prepared = replace(prepared, render=prepared.render.model_copy(update={"steps": steps}))
    return query(config, lambda s: enqueue(prepared, s.queue, s.media, priority=priority)).job_id


def job(config: Path, job_id: str) -> JobRecord:
    return query(config, lambda s: s.queue.get(job_id))


def wait_for(condition, *, timeout_s: float, what: str, log: Path | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    tail = log.read_text()[-4000:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}\n{tail}")


def wait_state(config: Path, job_id: str, states, *, timeout_s: float, log: Path | None = None) -> JobRecord:
    states = {states} if isinstance(states, str) else set(states)
    return wait_for(lambda: (r := job(config, job_id)).state in states and r, timeout_s=timeout_s,
                    what=f"job {job_id[:8]} in {states}", log=log)  # fmt: skip


def rendering(config: Path, job_id: str, *, min_step: int = 1, max_step: int | None = None) -> bool:
    record = job(config, job_id)
    step = int((record.progress_detail or "0/0").split("/")[0])
    return (record.state == JobState.RUNNING and record.stage == "render" and step >= min_step
            and (max_step is None or step <= max_step))  # fmt: skip


class Engine:
    """The service as operators start it: run_engine.sh (check, supervisor, torchrun, the tiny preset)."""

    def __init__(self, config: Path, tmp_path: Path, *, nproc: int = 2, name: str = "engine",
                 extra: tuple[str, ...] = ()) -> None:  # fmt: skip
        self.config = config
        self.log = tmp_path / f"{name}.log"
        self.name = load_settings(config).engine.worker_name
        command = ["./run_engine.sh", "--gpus", str(nproc), "--config", str(config), "--collective_timeout_s", "3",
                   *extra]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHON": sys.executable}
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)  # fmt: skip

    def wait_ready(self, timeout_s: float = 60) -> None:
        def idle() -> bool:
            workers = query(self.config, lambda s: admin.list_workers(s.queue))
            return any(w["id"] == self.name and w["state"] == "idle" for w in workers)

        wait_for(idle, timeout_s=timeout_s, what="the engine to register", log=self.log)

    def ranks(self) -> dict[int, psutil.Process]:
        found = {}
        for process in psutil.process_iter():
            try:
                env = process.environ()
            except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            if env.get("DUET_WORKER_NAME") == self.name and "LOCAL_RANK" in env:
                found[int(env["LOCAL_RANK"])] = process
        return found

    def stop(self, timeout_s: float = 45) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        finally:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGKILL)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


@pytest.fixture
def engines():
    started: list[Engine] = []
    yield started
    for engine in started:
        engine.kill()


def video_facts(path: Path) -> dict:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        return {
            "fps": float(video.average_rate), "width": video.width, "height": video.height,
            "audio_streams": len(container.streams.audio), "frames": sum(1 for _ in container.decode(video=0)),
        }  # fmt: skip


def stages_rendered(log: Path, job_id: str) -> dict[int, list[str]]:
    """The stages each rank ran for the job, from its "job … rendered: <stage> <s>, …" log line."""
    found = {}
    for line in log.read_text().splitlines():
        if f"job {job_id} rendered: " in line:
            rank = int(re.search(r" rank(\d+) ", line).group(1))
            found[rank] = [timing.split()[0] for timing in line.split(" rendered: ")[1].split(", ")]
    return found


def media_path(config: Path, job_id: str, role: str) -> Path:
    return Path(load_settings(config).storage.media_dir) / job_id / f"{role}.mp4"


# ---- tests --------------------------------------------------------------------------------------------------


def speech_duration_s(spec) -> float:
    """What the engine's speech stage makes of the job's dialogue (the tiny Kokoro is seeded, so the same)."""
    from engine.pipeline import RenderPipeline
    from engine.stages.tts import load_tts

    return RenderPipeline(models=None, tts=load_tts(None, preset="tiny")).speak(spec).duration_s


def test_two_ranks_serve_idle_then_render_cancel_and_sigterm(tmp_path, engines):
    """The real pipeline (tiny preset) on two gloo ranks with Ulysses sequence parallelism. (That two ranks render
    the frames of one is checked before encoding, in test_parallel.py: x264 does not repeat its bytes.)"""
    config = write_config(tmp_path)
    engine = Engine(config, tmp_path, name="two")
    engines.append(engine)
    engine.wait_ready(timeout_s=180)
    assert len(engine.ranks()) == 2

    # Idle well past the collective timeout (3 s): the ranks wait on gloo, not in a render collective.
    time.sleep(6)
    first = submit(config, steps=3)
    done = wait_state(config, first, "succeeded", timeout_s=180, log=engine.log)
    result = done.result
    facts = video_facts(media_path(config, first, "result"))
    assert facts["fps"] == FPS
    assert (facts["width"], facts["height"]) == (result.width, result.height)
    assert facts["audio_streams"] == 1
    assert abs(facts["frames"] / FPS - speech_duration_s(done.spec)) <= 1 / FPS
    assert done.attempts == 1
    assert [t.stage for t in result.timings] == ["tts", "audio", "encode", "render", "decode", "mux"]
    # Both ranks rendered the job; only rank 0, whose file is stored, wrote an MP4.
    stages = wait_for(lambda: len(found := stages_rendered(engine.log, first)) == 2 and found, timeout_s=10,
                      what="both ranks' render log lines", log=engine.log)  # fmt: skip
    assert stages == {0: ["tts", "audio", "encode", "render", "decode", "mux"],
                      1: ["tts", "audio", "encode", "render", "decode"]}  # fmt: skip

    # Cancel while rendering: every rank stops at a step boundary, the job ends cancelled, the service goes on.
    cancelled = submit(config, steps=30)
    wait_for(lambda: rendering(config, cancelled, min_step=2), timeout_s=120, what="render steps", log=engine.log)
    query(config, lambda s: s.queue.cancel(cancelled, actor="admin", is_admin=True))
    record = wait_state(config, cancelled, "cancelled", timeout_s=30, log=engine.log)
    assert int(record.progress_detail.split("/")[0]) < 30

    # SIGTERM mid-job: requeued within torchrun's 30 s grace, the attempt not charged; the group exits.
    stopped = submit(config, steps=30)
    wait_for(lambda: rendering(config, stopped, min_step=2), timeout_s=120, what="render steps", log=engine.log)
    ranks = engine.ranks()
    signalled = time.monotonic()
    engine.process.send_signal(signal.SIGTERM)
    record = wait_state(config, stopped, "queued", timeout_s=30, log=engine.log)
    assert time.monotonic() - signalled < 30
    assert record.attempts == 0 and record.shutdown_requeues == 1
    assert engine.process.wait(45) == 0
    _, alive = psutil.wait_procs(list(ranks.values()), timeout=15)  # a loaded machine lets them linger briefly
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]

    # A one-rank engine picks up the requeued job and completes it; the stop did not cost it an attempt.
    single = Engine(config, tmp_path, nproc=1, name="one")
    engines.append(single)
    record = wait_state(config, stopped, "succeeded", timeout_s=240, log=single.log)
    assert record.attempts == 1 and record.shutdown_requeues == 1
    assert single.stop() == 0


def test_killed_rank_requeues_and_a_poison_job_dies_while_others_complete(tmp_path, engines):
    config = write_config(tmp_path, max_attempts=2)
    # Three crashes on two jobs would trip the default breaker (3 on 2); here they are the test's own doing.
    engine = Engine(config, tmp_path, name="kill", extra=("--breaker_crashes", "10"))
    engines.append(engine)
    engine.wait_ready(timeout_s=180)
    victim = submit(config, steps=20)
    poison = submit(config, steps=20, seed=8)

    killed_attempts: dict[str, set[int]] = {victim: set(), poison: set()}

    def kill_rank_one_when_rendering() -> bool:
        """Kill rank 1 during every attempt of the poison job and during the victim's first attempt only."""
        for job_id, attempts in killed_attempts.items():
            record = job(config, job_id)
            wanted = job_id == poison or not attempts
            # Well before the last step: on a loaded machine the recorded step lags, and a kill after the ranks'
            # final exchange would no longer fail the attempt.
            if wanted and record.attempts not in attempts and rendering(config, job_id, max_step=12):
                rank_one = engine.ranks().get(1)
                if rank_one is not None:
                    rank_one.kill()
                    attempts.add(record.attempts)
        states = {job(config, j).state for j in killed_attempts}
        return states == {JobState.SUCCEEDED.value, JobState.DEAD.value}

    wait_for(kill_rank_one_when_rendering, timeout_s=420, what="victim succeeded, poison dead", log=engine.log)
    survivor, dead = job(config, victim), job(config, poison)
    assert survivor.state == "succeeded" and survivor.attempts == 2 and killed_attempts[victim] == {1}
    assert dead.state == "dead" and dead.attempts == 2 and killed_attempts[poison] == {1, 2}
    events = query(config, lambda s: s.queue.events(victim))
    assert [e.kind for e in events].count("succeeded") == 1
    assert [e.kind for e in events].count("reaped") == 1
    assert not query(config, lambda s: s.queue.paused())["claims"]  # crashes on one bad job do not trip the breaker
    assert engine.stop() == 0
