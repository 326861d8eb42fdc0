"""`python -m engine.parallel.selfcheck` (what operators run on a GPU host) passes on 2 gloo ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_selfcheck_reports_exact_parallel_results_on_gloo(tmp_path):
    out = tmp_path / "report.json"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "engine.parallel.selfcheck", "--out", str(out),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    report = json.loads(out.read_text())
    assert report["world_size"] == 2 and report["backend"] == "gloo"
    assert report["ulysses_attention_float32"] < 1e-6
    assert report["ulysses_tiny_dit_fp32"] < 1e-5
