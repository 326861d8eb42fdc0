"""The fast-modes benchmark on the tiny DiT (CPU): every mode runs the real sampler and reports its deviation.

Speeds are measured on GPUs (docs/benchmarks.md), never asserted here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from engine import bench_modes
from engine.bench import build_model
from engine.bench_modes import MODES, append_markdown, slow_time_response
from engine.cache import WARMUP_STEPS
from engine.models.attention import _per_head_fp8, register_attention_backend
from engine.models.dit import DiTConfig
from engine.quantize import FP8Linear

STEPS = WARMUP_STEPS + 2  # TeaCache computes every branch's first 5 steps; the rest may be skipped
EMULATED_FP8 = "emulated_fp8"
fp8_attention_calls = []


def emulated_fp8_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """FA3's float8 attention on the CPU: inputs rounded to float8 per head, then exact attention."""
    fp8_attention_calls.append(q.shape)

    def rounded(x: torch.Tensor) -> torch.Tensor:
        x8, descale = _per_head_fp8(x)
        return x8.to(x.dtype) * descale[:, :, None, None]

    return torch.nn.functional.scaled_dot_product_attention(rounded(q), rounded(k), rounded(v))


register_attention_backend(EMULATED_FP8, emulated_fp8_attention)


@pytest.fixture(scope="module")
def tiny_results():
    model = build_model(DiTConfig.tiny(), torch.device("cpu"), torch.float32)
    slow_time_response(model)
    # A threshold far above the reference's 0.2: the tiny model at 7 steps moves its modulation too much for 0.2.
    results = bench_modes.bench_modes(
        model, model, MODES, size=64, frames=5, steps=STEPS, distilled_steps=3, teacache_threshold=1e9,
        fp8_attention=EMULATED_FP8, warmup=0,
    )  # fmt: skip
    return model, {r.mode: r for r in results}


def test_every_mode_reports_in_order_exact_first(tiny_results):
    _, results = tiny_results
    assert list(results) == list(MODES)
    for result in results.values():
        assert result.step_s_median > 0 and result.denoise_s >= result.step_s_median
        assert result.blocks_computed + result.blocks_skipped == result.steps * result.passes


def test_exact_is_its_own_reference(tiny_results):
    exact = tiny_results[1]["exact"]
    assert exact.relative_error == 0.0 and exact.blocks_skipped == 0
    assert (exact.steps, exact.passes, exact.reference) == (STEPS, 3, f"exact, {STEPS} steps")


def test_fp8_deviates_a_little_and_quantized_the_model(tiny_results):
    model, results = tiny_results
    assert 1e-5 < results["fp8"].relative_error < 0.05
    assert results["fp8"].blocks_skipped == 0
    assert isinstance(model.blocks[0].ffn[0], FP8Linear)  # the FP8 modes ran on the swapped model


def test_fp8_attention_runs_only_in_its_modes_and_deviates_a_little(tiny_results):
    model, results = tiny_results
    assert 1e-5 < results["fp8attn"].relative_error < 0.1
    assert results["fp8+fp8attn"].relative_error > 1e-5
    # per block pass at least self-attention, image and text cross-attention, audio cross-attention (with two
    # speakers also the reference map), in those modes only (the warm-up is off)
    passes = sum(results[mode].steps * results[mode].passes for mode in ("fp8attn", "fp8+fp8attn"))
    assert 4 * model.config.num_layers * passes <= len(fp8_attention_calls) <= 5 * model.config.num_layers * passes
    backends = {getattr(module, name) for module in model.modules() for name in ("attention_backend",
                "local_attention_backend") if hasattr(module, name)}  # fmt: skip
    assert backends == {model.config.attention_backend}  # restored for the modes after it


def test_teacache_skips_block_passes_and_changes_the_result(tiny_results):
    _, results = tiny_results
    for mode in ("teacache", "fp8+teacache"):
        # Each of the 3 branches may skip only after its 5 computed warm-up steps.
        assert 0 < results[mode].blocks_skipped <= 3 * (STEPS - WARMUP_STEPS)
        assert results[mode].relative_error > 0
    assert results["fp8+teacache"].blocks_skipped == results["teacache"].blocks_skipped  # decisions ignore FP8


def test_distilled_runs_two_passes_against_exact_at_its_step_count(tiny_results):
    _, results = tiny_results
    for mode in ("distilled", "fp8+distilled"):
        assert (results[mode].steps, results[mode].passes) == (3, 2)
        assert results[mode].reference == "exact, 3 steps" and results[mode].relative_error > 0


def test_unknown_mode_is_refused():
    model = build_model(DiTConfig.tiny(), torch.device("cpu"), torch.float32)
    with pytest.raises(ValueError, match="int8"):
        bench_modes.bench_modes(model, model, ["exact", "int8"], size=64, frames=5, steps=1)


def test_slow_time_response_lets_teacache_see_small_changes():
    """With all sinusoid frequencies the random modulation jumps ~70 % per step; restricted, a few percent."""
    from engine.models.dit import _run_fp32, timestep_embedding
    from engine.sampling import FlowMatchEulerScheduler

    model = build_model(DiTConfig.tiny(), torch.device("cpu"), torch.float32)

    def mean_change() -> float:
        times = FlowMatchEulerScheduler(40, 7.0).timesteps[:-1]
        with torch.no_grad():
            e0 = [_run_fp32(model.time_projection, _run_fp32(model.time_embedding, timestep_embedding(
                t[None], model.config.freq_dim))) for t in times]
        return sum(((b - a).abs().mean() / a.abs().mean()).item() for a, b in zip(e0, e0[1:])) / (len(e0) - 1)

    before = mean_change()
    slow_time_response(model)
    assert before > 0.3 and mean_change() < 0.1


def test_cli_writes_json_and_keeps_one_table(tmp_path, monkeypatch, capsys):
    markdown = tmp_path / "benchmarks.md"
    markdown.write_text("# Engine benchmarks\n\n## Other table\n\n| a |\n|---|\n| 1 |\n")
    out = tmp_path / "modes.json"
    argv = ["engine.bench_modes", "--tiny", "--size", "64", "--frames", "5", "--steps", "2", "--warmup", "0",
            "--modes", "exact", "fp8", "--out", str(out), "--markdown", str(markdown), "--note", "cpu smoke"]
    monkeypatch.setattr(sys, "argv", argv)
    bench_modes.main()
    report = json.loads(out.read_text())
    assert [r["mode"] for r in report["results"]] == ["exact", "fp8"]
    assert report["gpus"] == 1 and len(report["notes"]) == 3
    assert "rough proxy" in capsys.readouterr().out  # the caveat is printed with the numbers
    # Text after the table stays after it; a second run adds rows to the same table.
    markdown.write_text(markdown.read_text() + "\nA paragraph under the table.\n")
    append_markdown(markdown, [bench_modes.ModeResult(**r) for r in report["results"]], size=64, frames=5, gpus=1,
                    attention="sdpa", note="again")
    lines = markdown.read_text().splitlines()
    assert lines.count(bench_modes.MARKDOWN_SECTION) == 1 and lines.count("| 1 |") == 1
    header = lines.index(bench_modes.MARKDOWN_HEADER.splitlines()[0])
    rows = lines[header + 2 : header + 6]
    assert [row.split(" | ")[6] for row in rows] == ["exact", "fp8", "exact", "fp8"]
    assert rows[0].endswith("| cpu smoke |") and rows[3].endswith("| again |")
    assert lines[header + 6] == "" and lines[header + 7] == "A paragraph under the table."


@pytest.mark.slow
def test_fp8_under_two_sequence_parallel_ranks_matches_one_rank(tmp_path, monkeypatch):
    """FP8 linears quantize per token, so splitting the tokens over ranks (Ulysses) changes nothing."""
    from tests.engine.test_parallel import torchrun

    args = ["--tiny", "--size", "64", "--frames", "5", "--steps", "2", "--warmup", "0", "--modes", "exact", "fp8"]
    two_ranks, one_rank = tmp_path / "two.json", tmp_path / "one.json"
    run = torchrun(Path(bench_modes.__file__), 2, *args, "--out", str(two_ranks))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    monkeypatch.setattr(sys, "argv", ["engine.bench_modes", *args, "--out", str(one_rank)])
    bench_modes.main()
    two, one = (json.loads(path.read_text()) for path in (two_ranks, one_rank))
    assert two["gpus"] == 2 and one["gpus"] == 1
    assert two["results"][1]["relative_error"] == pytest.approx(one["results"][1]["relative_error"], rel=1e-4)


def test_the_fp8attn_switch_reaches_ulysses_local_kernel_and_is_undone():
    """Under sequence parallelism the self-attention's backend is the Ulysses exchange, which must stay; the kernel
    it runs on each rank's heads is what the switch changes, with every other attention of the blocks."""
    import torch.distributed as dist

    from engine.parallel.sequence import ULYSSES_BACKEND, SequenceParallelDiT

    if dist.is_initialized():
        pytest.skip("a process group already exists in this test process")
    model = build_model(DiTConfig.tiny(), torch.device("cpu"), torch.float32)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        runner = SequenceParallelDiT(model, dist.group.WORLD)

        def backends() -> tuple[str, str, str, str]:
            block = model.blocks[0]
            return (block.self_attn.attention_backend, runner.ulysses.local_backend,
                    block.self_attn.local_attention_backend, block.audio_cross_attn.attention_backend)  # fmt: skip

        assert backends() == (ULYSSES_BACKEND, "sdpa", "sdpa", "sdpa")
        with bench_modes.attention_swapped(runner, EMULATED_FP8):
            assert backends() == (ULYSSES_BACKEND, EMULATED_FP8, EMULATED_FP8, EMULATED_FP8)
        assert backends() == (ULYSSES_BACKEND, "sdpa", "sdpa", "sdpa")
    finally:
        dist.destroy_process_group()
