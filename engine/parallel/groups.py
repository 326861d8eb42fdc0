"""The process groups of one engine: who talks to whom, over which backend, with which timeout.

Two kinds of traffic must never share a group. Render collectives (sequence-parallel all-to-all, FSDP
all-gathers) run on the world group: NCCL on GPUs, with a job-sized timeout so that a hung collective tears the
group down. Control traffic (the next job, a stop flag, the end-of-job status) runs on a separate gloo group with a
timeout of years: ranks 1..N wait in it while the queue is empty, and an NCCL collective parked there would be
killed by its watchdog after its timeout (queue-reliability §(e), "idle-rank trap").

Run as one plain process (no torchrun), nothing is initialised and every group is `None`: the single-rank path.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

# A gloo group that waits this long is, for an operator, one that never times out.
CONTROL_TIMEOUT = timedelta(days=3650)
# How long a leaving rank waits for its peers before tearing the groups down anyway (one may be dead already).
FAREWELL_TIMEOUT = timedelta(seconds=10)


@dataclass(frozen=True)
class ParallelConfig:
    """How the ranks split the work; the option names are the original service's.

    `ulysses_size * ring_size` ranks share one DiT sequence; ring attention needs the xfuser backend.
    `collective_timeout_s` bounds one render collective, not an idle wait.
    """

    ulysses_size: int = 1
    ring_size: int = 1
    backend: str = "torch"  # sequence-parallel attention: "torch" (engine/parallel/sequence.py) or "xfuser"
    t5_fsdp: bool = False
    dit_fsdp: bool = False
    collective_timeout_s: float = 600.0

    @property
    def sequence_parallel_size(self) -> int:
        return self.ulysses_size * self.ring_size

    def check(self, world_size: int, num_heads: int) -> None:
        """Refuse a split the ranks cannot run, naming the numbers (as the reference's asserts do, but readable)."""
        if self.ulysses_size < 1 or self.ring_size < 1:
            raise ValueError("--ulysses_size and --ring_size must be at least 1")
        if self.sequence_parallel_size not in (1, world_size):
            raise ValueError(
                f"--ulysses_size {self.ulysses_size} x --ring_size {self.ring_size} must be 1 or the number of "
                f"processes ({world_size})"
            )
        if num_heads % self.ulysses_size:
            raise ValueError(f"--ulysses_size {self.ulysses_size} must divide the DiT's {num_heads} attention heads")


@dataclass(frozen=True)
class ProcessGroups:
    """This process's place in the engine. `world` and `control` are None for a single process."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # "nccl" or "gloo" for the world group; None without torch.distributed
    world: dist.ProcessGroup | None
    control: dist.ProcessGroup | None

    @property
    def is_leader(self) -> bool:
        """Rank 0: the only rank that talks to the database and writes files."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world is not None


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def init_groups(collective_timeout_s: float = 600.0) -> ProcessGroups:
    """Join the torchrun group (NCCL on CUDA, gloo on CPU) and create the gloo control group.

    `cuda:LOCAL_RANK` is this rank's device. Without torchrun's environment, returns the single-process layout.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return ProcessGroups(0, 1, local_rank, device, None, None, None)
    if use_cuda:
        torch.cuda.set_device(device)
    backend = "nccl" if use_cuda else "gloo"
    dist.init_process_group(
        backend, timeout=timedelta(seconds=collective_timeout_s), device_id=device if use_cuda else None
    )
    control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    return ProcessGroups(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        device=device,
        backend=backend,
        world=dist.group.WORLD,
        control=control,
    )


@contextmanager
def joined_groups(collective_timeout_s: float = 600.0) -> Iterator[ProcessGroups]:
    """`init_groups` for a `with` block, which leaves through `destroy_groups` however it ends."""
    groups = init_groups(collective_timeout_s)
    try:
        yield groups
    finally:
        destroy_groups(groups)


def destroy_groups(groups: ProcessGroups) -> None:
    """Leave the engine: tear every group down once the peers are done with them (`part_from_peers`)."""
    if groups.is_distributed and dist.is_initialized():
        part_from_peers()


def part_from_peers(timeout: timedelta = FAREWELL_TIMEOUT) -> None:
    """Destroy the process groups once every rank has checked in on the rendezvous store, which outlives them.

    A gloo collective can return on one rank while a peer still reads its last message (a broadcast's root returns
    first, and so may a barrier's last sender); tearing the connections down under that peer aborts it ("terminate
    called without an active exception"). Once every rank has checked in, no rank is inside a collective. A peer
    that is already gone (killed, crashed) only delays the others by `timeout`.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    store = dist.distributed_c10d._get_default_store()
    store.set(f"duet/left/{rank}", "1")
    try:
        store.wait([f"duet/left/{peer}" for peer in range(world)], timeout)
    except RuntimeError as error:  # a peer did not come (the store's timeout is a RuntimeError): leave anyway
        logger.warning("rank %d leaves without its peers: %s", rank, str(error).splitlines()[0])
    dist.destroy_process_group()
