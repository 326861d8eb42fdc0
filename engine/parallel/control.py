"""The control channel: how rank 0 tells the other ranks what to do, over the gloo control group.

Three conversations, each a collective every rank enters the same number of times:
- `announce`: between jobs, rank 0 sends the next job (or None: stop). Ranks 1..N wait here while the queue is
  empty, on gloo with a timeout of years (never an NCCL group: see groups.py).
- `agree`: at every step boundary, rank 0's stop code (cancel, lease lost, shutdown, time limit; 0 = go on)
  reaches every rank, so that all of them stop at the same step and no one is left inside a render collective.
- `gather`: after a job, every rank's outcome reaches every rank, so all decide alike whether the group is still
  sound (see engine/serve.py).
A single process (no groups) answers each with its own value.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
import torch.distributed as dist

from engine.parallel.groups import ProcessGroups

T = TypeVar("T")


class ControlChannel:
    def __init__(self, groups: ProcessGroups) -> None:
        self.group = groups.control
        self.rank = groups.rank
        self.world_size = groups.world_size

    def announce(self, message: T | None = None) -> T | None:
        """Rank 0's `message` on every rank (a picklable object; other ranks pass nothing)."""
        if self.group is None:
            return message
        box = [message if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def agree(self, code: int) -> int:
        """Rank 0's `code` on every rank; the other ranks' values are ignored."""
        if self.group is None:
            return code
        value = torch.tensor([code if self.rank == 0 else 0], dtype=torch.int64)
        dist.broadcast(value, src=0, group=self.group)
        return int(value.item())

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank."""
        if self.group is None:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value, group=self.group)
        return values
