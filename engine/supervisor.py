"""`python -m engine.supervisor`: keeps one torchrun group of `engine.serve` alive; run_engine.sh starts it.

It sits outside torchrun because what it must do cannot be done from inside a group that is going down:
- SIGTERM (an operator's stop): requeue this worker's running job at once, without charging the attempt, then
  pass the signal on to torchrun, which gives the ranks 30 s before SIGKILL. Doing the requeue here, not in rank
  0, keeps it apart from the SIGTERM torchrun itself sends when a rank dies: a crashed job must be charged (the
  reaper does it when the lease runs out) or a poison job would never become `dead`.
- A crash (torchrun exits non-zero without being asked to stop): restart the group with a growing pause, and
  count the crash for the breaker: crashes on several different jobs in a short time point at the machine, not
  at a job, so claiming is paused (`duet queue resume` lifts it) to save every other job's attempts.
- Exit 0 from the group (drain, `--once`) ends the supervisor with 0.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from storage.cli import run_action
from storage.contract import JobState
from storage.errors import LeaseLost
from storage.queue import JobQueue
from storage.settings import Settings, load_settings

logger = logging.getLogger("engine.supervisor")

STOP_GRACE_S = 40.0  # torchrun's own grace is 30 s; then it SIGKILLs the ranks
MAX_RESTART_PAUSE_S = 60.0
HEALTHY_RUN_S = 600.0  # a group that lived this long resets the restart pause


@dataclass(frozen=True)
class Crash:
    at: float
    job_id: str | None


class CrashBreaker:
    """Trips when `max_crashes` crashes touching at least `min_jobs` different jobs fall within `window_s`."""

    def __init__(self, max_crashes: int = 3, min_jobs: int = 2, window_s: float = 600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.max_crashes = max_crashes
        self.min_jobs = min_jobs
        self.window_s = window_s
        self.clock = clock
        self.crashes: deque[Crash] = deque()

    def record(self, job_id: str | None) -> bool:
        now = self.clock()
        self.crashes.append(Crash(now, job_id))
        while self.crashes and now - self.crashes[0].at > self.window_s:
            self.crashes.popleft()
        jobs = {crash.job_id for crash in self.crashes if crash.job_id is not None}
        return len(self.crashes) >= self.max_crashes and len(jobs) >= self.min_jobs

    def describe(self) -> str:
        jobs = sorted({c.job_id for c in self.crashes if c.job_id is not None})
        return f"{len(self.crashes)} engine crashes within {self.window_s:.0f} s on jobs {', '.join(jobs)}"


async def running_jobs(queue: JobQueue, worker_name: str) -> list[tuple[str, str]]:
    """(job id, lease token) of the jobs this worker holds, as the database sees them."""
    jobs = await queue.list_jobs(states=[JobState.RUNNING.value], limit=1000)
    return [(job.id, job.lease_token) for job in jobs if job.lease_owner == worker_name and job.lease_token]


async def requeue_running(queue: JobQueue, worker_name: str) -> list[str]:
    requeued = []
    for job_id, token in await running_jobs(queue, worker_name):
        try:
            await queue.requeue(job_id, token, reason="engine stopped")
            requeued.append(job_id)
        except LeaseLost:
            pass  # finished in the meantime
    return requeued


class Supervisor:
    def __init__(self, settings: Settings, command: Sequence[str], worker_name: str, breaker: CrashBreaker) -> None:
        self.settings = settings
        self.command = list(command)
        self.worker_name = worker_name
        self.breaker = breaker
        self.stopping = False
        self.stopping_since: float | None = None
        self.group: subprocess.Popen | None = None

    def stop(self, signum: int, _frame=None) -> None:
        """Operator stop (a signal handler: flags and the signal only). The ranks hear it first, so that rank 0
        claims nothing more; `_wait` then requeues our running job, uncharged, within torchrun's 30 s grace, and
        `run` once more after the group is gone, for a claim that was already on its way."""
        if self.stopping:
            return
        self.stopping = True
        self.stopping_since = time.monotonic()
        logger.info("signal %d: stopping the engine and requeueing its job", signum)
        if self.group is not None and self.group.poll() is None:
            os.killpg(self.group.pid, signal.SIGTERM)

    def _requeue(self) -> None:
        requeued = run_action(self.settings, lambda s: requeue_running(s.queue, self.worker_name))
        if requeued:
            logger.info("requeued %s", ", ".join(requeued))

    def run(self) -> int:
        pause_s = 1.0
        while True:
            started = time.monotonic()
            env = {**os.environ, "DUET_WORKER_NAME": self.worker_name, "DUET_SUPERVISED": "1"}
            self.group = subprocess.Popen(self.command, env=env, start_new_session=True)
            code = self._wait(self.group)
            if self.stopping:
                self._requeue()
                return 0
            if code == 0:
                return 0
            jobs = run_action(self.settings, lambda s: running_jobs(s.queue, self.worker_name))
            job_id = jobs[0][0] if jobs else None
            logger.error("engine group exited with %d (job %s); restarting in %.0f s", code, job_id, pause_s)
            if self.breaker.record(job_id):
                reason = f"crash breaker: {self.breaker.describe()}; check the GPUs, then `duet queue resume`"
                logger.error(reason)
                run_action(self.settings, lambda s: s.queue.set_paused(claims=True, reason=reason))
            pause_s = 1.0 if time.monotonic() - started > HEALTHY_RUN_S else min(pause_s * 2, MAX_RESTART_PAUSE_S)
            deadline = time.monotonic() + pause_s
            while time.monotonic() < deadline and not self.stopping:
                time.sleep(0.2)
            if self.stopping:
                return 0

    def _wait(self, group: subprocess.Popen) -> int:
        """The group's exit code; once stopping, requeue at once and SIGKILL whatever is left after the grace."""
        requeued = False
        ranks: list[int] = []  # taken when stopping starts: once torchrun is gone, orphans are lost from view
        while self.stopping_since is None or time.monotonic() - self.stopping_since < STOP_GRACE_S:
            try:
                code = group.wait(timeout=0.2)
                kill_process_groups(ranks)  # a rank that outlived torchrun on the way down
                return code
            except subprocess.TimeoutExpired:
                if self.stopping and not requeued:
                    ranks = descendants(group.pid)
                    self._requeue()
                    requeued = True
        logger.error("engine did not stop within %.0f s: killing it and its ranks", STOP_GRACE_S)
        ranks = ranks or descendants(group.pid)
        os.killpg(group.pid, signal.SIGKILL)
        kill_process_groups(ranks)
        return group.wait()


def kill_process_groups(pids: list[int]) -> None:
    """SIGKILL each process's group: torchrun starts every rank in a session of its own."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    """Every live process below `pid`, from Linux's /proc. torchrun starts each rank in a session of its own, so a
    signal to torchrun's process group does not reach the ranks; killed alone, torchrun would leave them running,
    holding their GPUs."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])  # the name field may hold spaces
            children.setdefault(parent, []).append(int(stat.parent.name))
    found, pending = [], [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


_OPTIONS = ("--config", "--worker_name", "--breaker_crashes", "--breaker_jobs", "--breaker_window_s")


def main(argv: Sequence[str] | None = None) -> int:
    """engine.supervisor [--config FILE] [--worker_name NAME] [--breaker_… N] -- torchrun … -m engine.serve …"""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--" not in args:
        print(f"usage: python -m engine.supervisor [{' VALUE] ['.join(_OPTIONS)} VALUE] -- COMMAND…", file=sys.stderr)
        return 2
    split = args.index("--")
    own, command = args[:split], args[split + 1 :]
    options = dict(zip(own[::2], own[1::2]))
    unknown = set(options) - set(_OPTIONS)
    if unknown or len(own) % 2:
        print(f"engine.supervisor: unknown or incomplete options {sorted(unknown) or own}", file=sys.stderr)
        return 2
    logging.basicConfig(level=os.environ.get("DUET_LOG_LEVEL", "INFO"), stream=sys.stderr,
                        format="%(asctime)s supervisor %(levelname)s: %(message)s")  # fmt: skip
    settings = load_settings(options.get("--config"))
    worker_name = (options.get("--worker_name") or settings.engine.worker_name
                   or f"{socket.gethostname()}-{os.getpid()}")  # fmt: skip
    breaker = CrashBreaker(
        max_crashes=int(options.get("--breaker_crashes", 3)), min_jobs=int(options.get("--breaker_jobs", 2)),
        window_s=float(options.get("--breaker_window_s", 600)),
    )  # fmt: skip
    supervisor = Supervisor(settings, command, worker_name, breaker)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, supervisor.stop)
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
