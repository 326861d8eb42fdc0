"""Leaving the engine (`destroy_groups`) under torchrun with gloo: ranks that broadcast up to the last moment all
leave cleanly, and a rank whose peer is already dead still leaves, after the farewell timeout, instead of hanging.

Run by pytest, this file launches itself under torchrun; as a rank, it runs `_rank_main`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from tests.engine.test_parallel import torchrun


@pytest.mark.slow
def test_ranks_that_broadcast_until_the_end_all_leave_cleanly(tmp_path):
    report = tmp_path / "report.json"
    for _ in range(2):
        run = torchrun(Path(__file__), 3, str(report), "broadcast")
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert "terminate called" not in run.stderr and "leaves without its peers" not in run.stderr
        assert json.loads(report.read_text()) == {"broadcasts": 50}


@pytest.mark.slow
def test_a_rank_whose_peer_died_still_leaves(tmp_path):
    report = tmp_path / "report.json"
    run = torchrun(Path(__file__), 2, str(report), "dead_peer")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "rank 0 leaves without its peers" in run.stderr
    results = json.loads(report.read_text())
    assert results["left_after_s"] < 60


def _rank_main(report_path: str, scenario: str) -> None:
    import logging

    import torch
    import torch.distributed as dist

    from engine.parallel.groups import destroy_groups, init_groups

    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(1)
    groups = init_groups(collective_timeout_s=60)
    if scenario == "broadcast":
        payload = torch.zeros(4)
        for count in range(50):  # rank 0 is the root of every broadcast and leaves right after the last one
            payload.fill_(count if groups.rank == 0 else -1)
            if count == 49 and groups.rank > 0:
                time.sleep(1)  # the peers come late to the last one
            dist.broadcast(payload, src=0, group=groups.control)
            assert payload[0].item() == count
        destroy_groups(groups)
        if groups.rank == 0:
            Path(report_path).write_text(json.dumps({"broadcasts": 50}))
        return
    if groups.rank == 1:  # gone without a word, as under kill -9 (status 0: torchrun would kill rank 0 otherwise)
        os._exit(0)
    time.sleep(1)
    start = time.monotonic()
    destroy_groups(groups)
    Path(report_path).write_text(json.dumps({"left_after_s": time.monotonic() - start}))


if __name__ == "__main__":
    _rank_main(sys.argv[1], sys.argv[2])
