"""The whole-clip benchmark on the CPU with the tiny preset, and the timing it reads: stages with named parts."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest

from engine import bench_clip
from engine.bench_clip import (
    TABLE_HEADER,
    TABLE_TITLE,
    JobTimings,
    append_markdown,
    fit_speech,
    main,
    opening_exchange,
    peak_memory,
)
from engine.stages.audio import target_frame_count
from engine.stages.clock import StageClock, part
from engine.stages.speech import LineTiming, Speech
from storage.contract import Stage

SAMPLE_SCRIPT = (
    "A: Hi! We are two photos that learned to talk.\n"
    "B: Write a dialogue, and we each say our lines.\n"
    "A: Photo A stands on the left.\n"
)


def test_a_part_is_charged_to_the_stage_being_measured():
    clock, other = StageClock(), StageClock()
    with part("t5"):  # no stage is measured: nothing to charge
        time.sleep(0.01)
    with clock.measure(Stage.ENCODE):
        with part("t5"):
            time.sleep(0.02)
        with part("clip"):
            pass
        with other.measure(Stage.TTS), part("g2p"):  # an inner clock takes the parts while it measures
            pass
        with part("t5"):
            time.sleep(0.01)
    with clock.measure(Stage.RENDER):
        pass
    assert [timing.stage for timing in clock.timings()] == ["encode", "render"]  # the stored stages, unchanged
    parts = {(p.stage, p.part): p.seconds for p in clock.parts()}
    assert list(parts) == [("encode", "t5"), ("encode", "clip")]
    assert 0.03 <= parts["encode", "t5"] <= clock.timings()[0].seconds
    assert [(p.stage, p.part) for p in other.parts()] == [("tts", "g2p")]


def _speech(seconds: float) -> Speech:
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal(round(seconds * 16_000)).astype(np.float32) for _ in range(2))
    soundtrack = rng.standard_normal(round(seconds * 24_000)).astype(np.float32)
    lines = (LineTiming(0, "A", "hi", 0.2, 1.0), LineTiming(1, "B", "yes", 1.5, seconds - 0.1))
    return Speech(sample_rate=16_000, tracks=MappingProxyType({"A": a, "B": b}), mixed=a + b, soundtrack=soundtrack,
                  soundtrack_rate=24_000, lines=lines)  # fmt: skip


@pytest.mark.parametrize("seconds", [2.5, 4.1])
def test_speech_is_fitted_to_exactly_one_clip(seconds):
    speech = _speech(seconds)
    fitted = fit_speech(speech, 81 / 25)
    assert fitted.duration_s == pytest.approx(3.24) and target_frame_count(fitted.duration_s) == 81
    assert fitted.soundtrack.shape == (77_760,) and fitted.tracks["A"].shape == fitted.mixed.shape == (51_840,)
    kept = min(speech.mixed.shape[0], 51_840)
    assert np.array_equal(fitted.tracks["B"][:kept], speech.tracks["B"][:kept])
    assert not fitted.mixed[kept:].any()  # padding is silence
    assert all(line.end_s <= 3.24 for line in fitted.lines) and not fitted.mixed.flags.writeable


def test_opening_exchange_is_both_speakers_first_lines_cut_to_the_clip():
    short = opening_exchange(SAMPLE_SCRIPT, 81 / 25)
    assert short == "A: Hi! We are\nB: Write a dialogue,"  # 2 x 3 words at 2.7 words/s + a turn: within 2.64 s
    assert opening_exchange(SAMPLE_SCRIPT, 60.0) == "\n".join(SAMPLE_SCRIPT.splitlines()[:2])


def _report(wall_s: float) -> dict:
    return {
        "date": "2026-11-26", "commit": "abc", "gpu": "NVIDIA H100 80GB HBM3", "gpus": 4, "preset": "full-random",
        "size": [960, 960], "frames": 81, "steps": 40, "passes": 3, "mode": "cudnn +compile", "wall_s": wall_s,
        "stages": {"tts": 0.5, "audio": 0.3, "encode": 2.0, "render": 380.0, "decode": 6.0, "mux": 1.0},
        "parts": {"encode": {"t5": 0.0, "clip": 0.05, "vae_encode": 1.9}}, "step_s": 9.5, "dit_share": 0.97,
        "peak_memory": [{"rank": 0, "allocated_gib": 50.1, "reserved_gib": 60.0},
                        {"rank": 1, "allocated_gib": 52.3, "reserved_gib": 58.0}],
    }  # fmt: skip


def test_rows_go_under_the_whole_clip_table_even_when_sections_follow(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Engine benchmarks\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    append_markdown(doc, _report(391.8), "first")
    with doc.open("a") as handle:
        handle.write("\n## Later section\n\ntext\n")
    append_markdown(doc, _report(392.4), "second")
    lines = doc.read_text().splitlines()
    header = lines.index(TABLE_HEADER.splitlines()[0])
    assert lines.count(TABLE_TITLE) == 1 and lines[header + 1].startswith("|---")
    first, second = lines[header + 2], lines[header + 3]
    assert first.endswith("| first |") and second.endswith("| second |") and lines[header + 4] == ""
    cells = [cell.strip() for cell in first.strip("|").split("|")]
    assert cells[:10] == ["2026-11-26", "abc", "NVIDIA H100 80GB HBM3", "4", "full-random", "960×960", "81", "40", "3",
                          "cudnn +compile"]  # fmt: skip
    assert cells[10:22] == ["391.8", "0.50", "0.30", "0.00", "0.05", "1.90", "380.00", "6.00", "1.00", "9.50",
                            "97.0%", "52.3 / 58.0"]  # fmt: skip
    assert lines[:5] == ["# Engine benchmarks", "", "| a | b |", "|---|---|", "| 1 | 2 |"]  # the first table untouched


def test_tiny_clip_times_every_stage_and_appends_a_row(tmp_path):
    out, doc = tmp_path / "clip.json", tmp_path / "benchmarks.md"
    main(["--preset", "tiny", "--size", "640", "--frames", "29", "--steps", "2", "--warmup-steps", "1",
          "--out", str(out), "--markdown", str(doc), "--note", "ci"])  # fmt: skip
    report = json.loads(out.read_text())
    assert (report["preset"], report["size"], report["frames"], report["steps"], report["gpus"]) == (
        "tiny", [64, 64], 29, 2, 1)  # fmt: skip
    assert list(report["stages"]) == ["tts", "audio", "encode", "render", "decode", "mux"]
    assert all(seconds > 0 for seconds in report["stages"].values())
    assert set(report["parts"]["encode"]) == {"frame", "t5", "clip", "vae_encode"}
    assert set(report["parts"]["tts"]) == {"g2p", "kokoro"}
    # The warm-up job encoded the prompts; the timed job finds them in the engine's prompt cache: no T5 forward.
    assert report["warmup"]["parts"]["encode"]["t5"] > 0 and report["parts"]["encode"]["t5"] == 0
    timed_parts = [(name, seconds) for parts in report["parts"].values() for name, seconds in parts.items()]
    assert all(seconds > 0 for name, seconds in timed_parts if name != "t5")
    assert sum(report["parts"]["encode"].values()) <= report["stages"]["encode"]
    assert sum(report["stages"].values()) <= report["wall_s"]
    assert report["dit_share"] == pytest.approx(report["stages"]["render"] / report["wall_s"], abs=1e-3)
    assert report["step_s"] == pytest.approx(report["stages"]["render"] / 2, abs=1e-3)
    assert report["warmup"]["steps"] == 1 and set(report["warmup"]["stages"]) == set(report["stages"])
    assert report["peak_memory"] == [{"rank": 0, "allocated_gib": 0.0, "reserved_gib": 0.0}]  # the CPU has none
    assert report["stage_memory"] == {}
    rows = [line for line in doc.read_text().splitlines() if line.startswith("| ") and line.endswith("| ci |")]
    assert len(rows) == 1 and "| tiny | 64×64 | 29 | 2 | 3 |" in rows[0]


def test_the_jobs_peak_memory_is_its_highest_stages():
    """A GPU clock resets the allocator's peak at each stage, so the job's peak is the highest stage's reading."""
    stage_memory = {
        "encode": {"allocated_gib": 50.0, "reserved_gib": 61.0},
        "render": {"allocated_gib": 55.5, "reserved_gib": 58.0},
        "decode": {"allocated_gib": 52.0, "reserved_gib": 60.0},
    }
    timed = JobTimings(steps=1, size=(960, 960), wall_s=1.0, stages={}, parts={}, speech_s=1.0,
                       stage_memory=stage_memory)  # fmt: skip
    assert peak_memory(timed) == {"allocated_gib": 55.5, "reserved_gib": 61.0}


@pytest.mark.slow
def test_two_ranks_with_the_eight_gpu_flags_render_the_whole_clip(tmp_path):
    """The 8-GPU issue's configuration (Ulysses over every rank, T5 and DiT sharded with FSDP) through the service's
    own pipeline, on 2 gloo ranks: every stage runs and the report names the sharding."""
    from tests.engine.test_parallel import torchrun

    out = tmp_path / "clip.json"
    run = torchrun(Path(bench_clip.__file__), 2, "--preset", "tiny", "--size", "640", "--frames", "29", "--steps", "1",
                   "--warmup-steps", "0", "--t5_fsdp", "--dit_fsdp", "--out", str(out), timeout_s=400)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["gpus"] == 2 and report["mode"].endswith("+t5_fsdp +dit_fsdp")
    assert list(report["stages"]) == ["tts", "audio", "encode", "render", "decode", "mux"]
    assert len(report["peak_memory"]) == 2
