"""Stage timings and progress reporting shared by the render stages and the pipeline.

A job's time is accounted per stage (`storage.contract.Stage`), summed over every visit: the render loop goes
back and forth between encode, render and decode once per chunk. Progress is a plain callable so that the
serve loop can forward it to the queue without the stages knowing about it.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from storage.contract import Stage, StageTiming

# (stage, done, total): e.g. (RENDER, 12, 80) after the 12th of 80 sampler steps of the whole job.
ProgressCallback = Callable[[Stage, int, int], None]


def ignore_progress(stage: Stage, done: int, total: int) -> None:
    """The progress callback of callers that do not watch."""


class StageClock:
    """Wall time per stage. `sync` runs before each reading so that queued GPU work is charged where it ran."""

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self._sync = sync
        self._seconds: defaultdict[Stage, float] = defaultdict(float)

    @contextmanager
    def measure(self, stage: Stage) -> Iterator[None]:
        if self._sync is not None:
            self._sync()
        started = time.perf_counter()
        try:
            yield
        finally:
            if self._sync is not None:
                self._sync()
            self._seconds[stage] += time.perf_counter() - started

    def timings(self) -> tuple[StageTiming, ...]:
        """One entry per stage that ran, in pipeline order."""
        return tuple(StageTiming(stage=str(stage), seconds=self._seconds[stage]) for stage in Stage
                     if stage in self._seconds)  # fmt: skip
