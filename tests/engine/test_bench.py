"""The benchmark's plumbing and FLOP model (speed itself is measured on GPUs, never asserted here)."""

from __future__ import annotations

import subprocess
from dataclasses import replace

import pytest
import torch

from engine import bench
from engine.bench import append_markdown, bench_steps, build_model, dit_flops_per_forward
from engine.models.dit import DiTConfig
from engine.quantize import quantize_dit_fp8


def test_flop_model_matches_the_performance_reference():
    config = DiTConfig()
    assert dit_flops_per_forward(config, 75_600, 3_600) / 1e15 == pytest.approx(6.97, abs=0.01)
    assert dit_flops_per_forward(config, 33_600, 1_600) / 1e15 == pytest.approx(1.92, abs=0.01)


@pytest.mark.parametrize("passes", [1, 2, 3])
def test_bench_steps_runs_every_guidance_pass(passes, tmp_path):
    config = replace(DiTConfig.tiny(), image_tokens=257)
    model = build_model(config, torch.device("cpu"), torch.float32)
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    result = bench_steps(model, size=64, frames=5, passes=passes, steps=2, warmup=1, peak_tflops=None)
    assert len(calls) == passes * 3 and len(result.step_s_all) == 2
    assert result.tokens == 2 * 4 * 4 and result.mfu is None
    table = tmp_path / "benchmarks.md"
    append_markdown(table, [result], gpus=1, note="cpu smoke")
    append_markdown(table, [result], gpus=1, note="again")
    lines = table.read_text().splitlines()
    assert lines.count("|---|---|---|---|---|---|---|---|---|---|---|---|---|") == 1
    assert sum("64×64" in line for line in lines) == 2 and not any("+fp8" in line for line in lines)


def test_fp8_steps_say_so_in_their_row(tmp_path):
    model = build_model(replace(DiTConfig.tiny(), image_tokens=257), torch.device("cpu"), torch.float32)
    quantize_dit_fp8(model)
    result = bench_steps(model, size=64, frames=5, passes=1, steps=1, warmup=0, peak_tflops=None)
    append_markdown(tmp_path / "benchmarks.md", [result], gpus=1, note="cpu smoke")
    assert result.fp8 and "| sdpa +fp8 |" in (tmp_path / "benchmarks.md").read_text()


def test_the_commit_is_marked_dirty_when_the_tree_differs_from_it(tmp_path, monkeypatch):
    monkeypatch.delenv("DUET_COMMIT", raising=False)
    monkeypatch.chdir(tmp_path)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    (tmp_path / "a.py").write_text("x = 1\n")
    for command in (["init", "-q"], ["add", "a.py"], ["commit", "-qm", "one"]):
        subprocess.run([*git, *command], check=True)
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert bench._commit() == head
    (tmp_path / "a.py").write_text("x = 2\n")
    assert bench._commit() == f"{head}+dirty"


def test_kernels_are_classed_by_name_with_communication_first():
    from engine.bench import kernel_class

    assert kernel_class("ncclDevKernel_SendRecv(ncclDevComm*, unsigned long, ncclWork*)") == "communication"
    assert kernel_class("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3") == "attention"
    assert kernel_class("nvjet_tst_256x128_64x4_2x1_v_bz_coopB_TNT") == "matmul"
    fa3 = "void cutlass::device_kernel<flash::enable_sm90<flash::FlashAttnFwdSm90<flash::CollectiveMainloopFwdSm90<2"
    assert kernel_class(fa3) == "attention"  # a CUTLASS kernel, but attention's
    assert kernel_class("sm90_xmma_gemm_e4m3e4m3_e4m3f32_f32_tn_n_tilesize128x128x128_warpgroupsize1x1x1") == "matmul"
    assert kernel_class("triton_poi_fused_add_mul_native_layer_norm_0") == "norm/elementwise"  # compiled fusions
    assert kernel_class("void at::native::indexSelectLargeIndex<float>") == "other"
    assert kernel_class("void at::native::vectorized_elementwise_kernel<4, ...>") == "norm/elementwise"
