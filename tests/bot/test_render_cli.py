"""`duet render` / `duet demo` and run_engine.sh as a newcomer meets them: one command from files to an MP4, and
clear refusals (missing weights, a bad script) before anything heavy starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import av
import pytest
from click.testing import CliRunner

from bot.cli import main
from storage import admin
from storage.cli import run_action
from storage.contract import Inputs, JobSpec, Line, MediaRef, Requester
from storage.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "bot" / "samples"


def write_config(tmp_path: Path, weights_dir: Path) -> Path:
    path = tmp_path / "bot_config.toml"
    path.write_text(f"""
[storage]
database_url = "sqlite+aiosqlite:///{tmp_path / 'duet.db'}"
media_dir = "{tmp_path / 'media'}"
[render]
steps = 2
quality = "480p"
[engine]
weights_dir = "{weights_dir}"
""")
    return path


def photos() -> list[str]:
    return ["--photo-a", str(SAMPLES / "grace_hopper.jpg"), "--photo-b", str(SAMPLES / "astronaut.png")]


def test_importing_the_cli_does_not_import_torch():
    code = "import sys, bot.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=False).returncode == 0


def test_run_engine_refuses_missing_weights_and_names_the_files(tmp_path):
    config = write_config(tmp_path, tmp_path / "weights")
    run = subprocess.run(["./run_engine.sh", "--config", str(config), "--preset", "full"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert run.returncode == 3
    assert "missing weight files" in run.stderr
    assert str(tmp_path / "weights" / "Wan2.1-I2V-14B-480P" / "multitalk.safetensors") in run.stderr
    assert str(tmp_path / "weights" / "Kokoro-82M" / "kokoro-v1_0.pth") in run.stderr


def invoke_render(tmp_path: Path, script_text: str, preset: str):
    """`duet render` in-process on the sample photos, with a config whose weights folder is empty."""
    config = write_config(tmp_path, tmp_path / "weights")
    script = tmp_path / "script.txt"
    script.write_text(script_text)
    return CliRunner().invoke(main, ["--config", str(config), "render", *photos(), "--script", str(script),
                                     "--preset", preset])  # fmt: skip


def test_render_refuses_a_bad_script_like_the_chat_does(tmp_path):
    result = invoke_render(tmp_path, "just one line without speakers", "tiny")
    assert result.exit_code == 1
    assert "Error" in result.output and "Traceback" not in result.output


def test_render_with_full_weights_missing_names_them_instead_of_starting(tmp_path):
    result = invoke_render(tmp_path, "A: Hello there.\nB: Hi!", "full")
    assert result.exit_code == 1
    assert "missing weight files" in result.output and "multitalk.safetensors" in result.output


def queue_call(config: Path, action):
    return run_action(load_settings(str(config)), lambda services: action(services.queue))


def someone_elses_job() -> JobSpec:
    media = {"size_bytes": 1, "sha256": "0" * 64}
    inputs = Inputs(photo_a=MediaRef(role="photo_a", **media), photo_b=MediaRef(role="photo_b", **media),
                    dialogue=(Line(speaker="A", text="Me first."), Line(speaker="B", text="Sure.")))  # fmt: skip
    return JobSpec(requester=Requester(platform="telegram", user_id="early-bird", chat_id="c1"), inputs=inputs)


@pytest.mark.slow
def test_render_starts_an_engine_for_the_job_and_writes_the_mp4(tmp_path):
    """The engine it starts renders this job only: an older job of someone else, ahead in the queue, stays queued."""
    config = write_config(tmp_path, tmp_path / "weights")
    older = queue_call(config, lambda queue: queue.submit(someone_elses_job())).job_id
    script = tmp_path / "script.txt"
    script.write_text("A: Hello there.\nB: Hi!")
    out = tmp_path / "out" / "video.mp4"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-c", "from bot.cli import main; main()", "--config", str(config), "render", *photos(),
         "--script", str(script), "--preset", "tiny", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "starting the render engine (tiny preset, 1 process(es))" in run.stderr
    assert f"wrote {out}" in run.stderr.replace("\n", "")
    with av.open(str(out)) as container:
        assert float(container.streams.video[0].average_rate) == 25 and container.streams.audio
    waiting = queue_call(config, lambda queue: queue.get(older))
    assert (waiting.state, waiting.attempts) == ("queued", 0)
    workers = queue_call(config, lambda queue: admin.list_workers(queue))
    assert [w["id"].startswith("duet-render-") for w in workers] == [True]


def test_an_engine_started_for_one_job_does_not_count_as_serving_the_queue(tmp_path):
    from bot.render import engine_is_serving

    config = write_config(tmp_path, tmp_path / "weights")
    settings = load_settings(str(config))

    def register(name):
        return queue_call(config, lambda queue: admin.register_worker(queue, name, host="h", pid=1, world_size=1,
                                                                      info={}))  # fmt: skip

    register("duet-render-1234abcd")
    assert not engine_is_serving(settings)
    register("gpu-host-1")
    assert engine_is_serving(settings)


def test_demo_says_plainly_that_tiny_output_is_noise(tmp_path, monkeypatch):
    """Without weights the demo falls back to the tiny preset and says what that means, before queueing."""
    from bot import render as cli

    config = write_config(tmp_path, tmp_path / "weights")
    monkeypatch.setattr(cli, "submit_files", lambda *args, **kwargs: (_ for _ in ()).throw(SystemExit(7)))
    monkeypatch.setattr(cli, "engine_is_serving", lambda settings: False)
    result = CliRunner().invoke(main, ["--config", str(config), "demo"])
    assert result.exit_code == 7
    assert "NOISE" in result.output and "tiny preset" in result.output
