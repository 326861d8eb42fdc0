"""`DistributedShard.gather_prefix` (frame 0's keys) equals gathering every token and slicing, on gloo ranks,
also when the prefix spans several ranks' slices. Launched under torchrun by the test; the `__main__` side runs
on every rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_prefix_gather_matches_full_gather(tmp_path):
    nproc = 3  # uneven slices (4, 4, 3); the prefix cases below cover one, two and three owning ranks
    out = tmp_path / "result.json"
    env = {**os.environ, "PREFIX_OUT": str(out)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", __file__]
    run = subprocess.run(command, env=env, timeout=180, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert json.loads(out.read_text()) == {"checked": 4, "world": nproc}


if __name__ == "__main__":
    import torch
    import torch.distributed as dist

    from engine.parallel.groups import part_from_peers
    from engine.parallel.sequence import DistributedShard, split_sizes

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    length = 11
    full = torch.arange(2 * 3 * length, dtype=torch.float32).reshape(2, 3, length, 1).expand(2, 3, length, 4)
    sizes = split_sizes(length, world)
    shard = DistributedShard(dist.group.WORLD, sizes)
    local = full[:, :, shard.offset : shard.offset + shard.length]
    checked = 0
    for count in (1, sizes[0], sizes[0] + 1, length):  # inside rank 0, exactly rank 0, spanning ranks, everything
        got = shard.gather_prefix(local, dim=2, count=count)
        torch.testing.assert_close(got, full[:, :, :count], rtol=0, atol=0)
        checked += 1
    if rank == 0:
        Path(os.environ["PREFIX_OUT"]).write_text(json.dumps({"checked": checked, "world": world}))
    part_from_peers()  # not under a peer that still reads (gloo aborts it)
