"""engine.serve's command line reaches what it promises: the fast-path options reach the loaded DiT, `--job_id`
reaches the leader, and only rank 0 writes the MP4. One process, the tiny preset."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from engine import serve
from engine.acceleration import is_compiled
from engine.parallel.groups import ParallelConfig, ProcessGroups
from engine.serve import Assignment, ServeOptions, build_pipeline, make_request
from storage.settings import Settings

SINGLE = ProcessGroups(0, 1, 0, torch.device("cpu"), None, None, None)


def options(**changes) -> ServeOptions:
    base = {"config_path": None, "preset": "tiny", "weights_dir": None, "once": True, "parallel": ParallelConfig(),
            "frame_num": None, "sample_shift": None, "offload_model": False, "time_limit_s": None, "worker_name": None}
    return ServeOptions(**base | changes)  # fmt: skip


def attention_backends_in(dit: torch.nn.Module) -> set[str]:
    found = set()
    for module in dit.modules():
        for name in ("attention_backend", "local_attention_backend"):
            if hasattr(module, name):
                found.add(getattr(module, name))
    return found


@pytest.fixture(scope="module")
def fast_pipeline():
    return build_pipeline(options(attention="math", compile=True), Settings(), SINGLE)


def test_attention_and_compile_reach_the_loaded_dit(fast_pipeline):
    dit = fast_pipeline.models.dit
    assert dit.config.attention_backend == "math"
    assert attention_backends_in(dit) == {"math"}
    assert is_compiled(dit)
    info = serve._worker_info(options(attention="math", compile=True), SINGLE, fast_pipeline, load_s=1.0)
    assert (info["attention"], info["compiled"]) == ("math", True)


def test_the_command_line_fills_the_options(monkeypatch, tmp_path):
    seen: list[ServeOptions] = []
    monkeypatch.setattr(serve, "serve", lambda opts: seen.append(opts) or 0)
    args = ["--preset", "tiny", "--job_id", "job-1", "--attention", "cudnn", "--compile"]
    assert CliRunner().invoke(serve.main, args).exit_code == 0
    assert (seen[0].job_id, seen[0].attention, seen[0].compile) == ("job-1", "cudnn", True)
    assert CliRunner().invoke(serve.main, ["--preset", "tiny"]).exit_code == 0
    assert (seen[1].job_id, seen[1].attention, seen[1].compile) == (None, None, False)  # the preset's kernel
    refused = CliRunner().invoke(serve.main, ["--attention", "fastest"])
    assert refused.exit_code == 2 and "sdpa" in refused.output


def test_only_rank_zero_writes_the_video(tmp_path):
    from storage.contract import Inputs, JobSpec, Line, MediaRef, Requester

    ref = {"size_bytes": 1, "sha256": "0" * 64}
    inputs = Inputs(photo_a=MediaRef(role="photo_a", **ref), photo_b=MediaRef(role="photo_b", **ref),
                    dialogue=(Line(speaker="A", text="Hi."), Line(speaker="B", text="Hello.")))  # fmt: skip
    spec = JobSpec(requester=Requester(platform="cli", user_id="1", chat_id="1"), inputs=inputs)
    assignment = Assignment("job-1", spec.model_dump_json(), str(tmp_path / "frame.png"))
    requests = [make_request(assignment, Path(tmp_path), rank=rank) for rank in range(3)]
    assert [r.writes_video for r in requests] == [True, False, False]
    assert requests[0].job_id == "job-1"


def test_fp8_and_low_memory_options_reach_the_pipeline():
    from engine.quantize import FP8Linear

    pipeline = build_pipeline(options(fp8=True), Settings(), SINGLE)
    swapped = [m for m in pipeline.models.dit.blocks.modules() if isinstance(m, FP8Linear)]
    assert len(swapped) == 15 * len(pipeline.models.dit.blocks)
    low = build_pipeline(options(persistent_dit_params=0, offload_model=True, t5_cpu=True), Settings(), SINGLE)
    assert low.options.persistent_dit_params == 0 and low.options.offload_models
    assert low.models.placement.text_device == "cpu"


@pytest.mark.parametrize(
    "args",
    [
        ["--dit_fsdp", "--fp8"],
        ["--dit_fsdp", "--num_persistent_param_in_dit", "0"],
        ["--fp8", "--offload_model", "true"],
        ["--t5_fsdp", "--t5_cpu"],
    ],
)
def test_options_that_do_not_combine_are_refused(args):
    refused = CliRunner().invoke(serve.main, ["--preset", "tiny", *args])
    assert refused.exit_code == 2
    assert "combine" in refused.output or "pick one" in refused.output


def test_the_command_line_fills_the_low_memory_options(monkeypatch):
    seen: list[ServeOptions] = []
    monkeypatch.setattr(serve, "serve", lambda opts: seen.append(opts) or 0)
    args = ["--preset", "tiny", "--num_persistent_param_in_dit", "7000000000", "--offload_model", "true", "--t5_cpu"]
    assert CliRunner().invoke(serve.main, args).exit_code == 0
    assert (seen[0].persistent_dit_params, seen[0].offload_model, seen[0].t5_cpu, seen[0].fp8) == (7e9, True, True, False)


@pytest.mark.parametrize(
    ("backend", "module", "install"),
    [("fa4", "flash_attn.cute.interface", "duet[fa4]"), ("fa3_fp8", "flash_attn_interface", "tools/fa3_build.sh")],
)
def test_a_kernel_without_its_package_is_refused_before_loading(monkeypatch, backend, module, install):
    """Not at the first job's forward, minutes after the models loaded: at the command line, saying what to install."""
    monkeypatch.setitem(sys.modules, module, None)  # the import fails, as without the package
    monkeypatch.setattr(serve, "serve", lambda opts: pytest.fail(f"served without the {backend} package"))
    refused = CliRunner().invoke(serve.main, ["--preset", "tiny", "--attention", backend])
    assert refused.exit_code == 2 and install in refused.output
    with pytest.raises(ValueError, match=install.replace("[", r"\[").replace("]", r"\]")):
        build_pipeline(options(attention=backend), Settings(), SINGLE)
