"""Stage timings and progress reporting shared by the render stages and the pipeline.

A job's time is accounted per stage (`storage.contract.Stage`), summed over every visit: the render loop goes
back and forth between encode, render and decode once per chunk. Inside a stage, code may name parts of its work
with `part("t5")`: the clock measuring that stage also sums the part's time (the benchmark shows encode as T5, CLIP
and VAE encode), while the stored per-stage timings stay as they are. A part outside any measured stage costs
nothing, so stage functions time their parts without being handed the clock. Progress is a plain callable so that
the serve loop can forward it to the queue without the stages knowing about it.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from storage.contract import Stage, StageTiming

# (stage, done, total): e.g. (RENDER, 12, 80) after the 12th of 80 sampler steps of the whole job.
ProgressCallback = Callable[[Stage, int, int], None]


def ignore_progress(stage: Stage, done: int, total: int) -> None:
    """The progress callback of callers that do not watch."""


@dataclass(frozen=True)
class PartTiming:
    """Seconds spent in one named part of a stage, summed over the job (e.g. encode / t5)."""

    stage: str
    part: str
    seconds: float


# The clock and stage being measured in this thread (or task), for `part` to charge.
_measuring: ContextVar[tuple[StageClock, Stage] | None] = ContextVar("measuring", default=None)


class StageClock:
    """Wall time per stage and per named part. `sync` runs before each reading so that queued GPU work is charged
    where it ran."""

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self._sync = sync
        self._seconds: defaultdict[Stage, float] = defaultdict(float)
        self._parts: defaultdict[tuple[Stage, str], float] = defaultdict(float)

    @contextmanager
    def measure(self, stage: Stage) -> Iterator[None]:
        token = _measuring.set((self, stage))
        try:
            with self._timed(self._seconds, stage):
                yield
        finally:
            _measuring.reset(token)

    @contextmanager
    def measure_part(self, stage: Stage, name: str) -> Iterator[None]:
        """Time a named part of `stage` (usually reached through `part`, inside `measure(stage)`)."""
        with self._timed(self._parts, (stage, name)):
            yield

    @contextmanager
    def _timed(self, totals: defaultdict, key: object) -> Iterator[None]:
        if self._sync is not None:
            self._sync()
        started = time.perf_counter()
        try:
            yield
        finally:
            if self._sync is not None:
                self._sync()
            totals[key] += time.perf_counter() - started

    def timings(self) -> tuple[StageTiming, ...]:
        """One entry per stage that ran, in pipeline order."""
        return tuple(StageTiming(stage=str(stage), seconds=self._seconds[stage]) for stage in Stage
                     if stage in self._seconds)  # fmt: skip

    def parts(self) -> tuple[PartTiming, ...]:
        """One entry per named part that ran, in pipeline order of their stages, then in the order first seen."""
        order = {stage: index for index, stage in enumerate(Stage)}
        keys = sorted(self._parts, key=lambda key: order[key[0]])  # stable: first-seen order within a stage
        return tuple(PartTiming(stage=str(stage), part=name, seconds=self._parts[stage, name]) for stage, name in keys)


@contextmanager
def part(name: str) -> Iterator[None]:
    """Charge the enclosed work to `name` within the stage being measured; a no-op when no stage is."""
    measuring = _measuring.get()
    if measuring is None:
        yield
        return
    clock, stage = measuring
    with clock.measure_part(stage, name):
        yield
