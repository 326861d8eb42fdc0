"""Test scaffolding for the serve tests: a small stand-in for `engine.pipeline.RenderPipeline`.

Used only while the real pipeline cannot be imported: it keeps the serve loop's contract (the same `render`
signature, `RenderCancelled` at step boundaries, progress per step, a real MP4 with an audio track) and runs the
tiny DiT through the real sequence-parallel wrapper at every step, so render collectives really happen between
the ranks. Run as a script under torchrun, it is `engine.serve` with that stand-in plugged in.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

FIXTURES = Path(__file__).parent / "fixtures"
FPS = 25
SPEECH_S_PER_LINE = 0.4  # the stand-in's "speech": this long per dialogue line


@dataclass(frozen=True)
class ScaffoldRequest:
    spec: object
    frame_path: Path
    work_dir: Path
    job_id: str


@dataclass(frozen=True)
class ScaffoldOutput:
    video_path: Path
    fitted_path: Path | None
    duration_s: float
    width: int
    height: int
    timings: tuple = ()


class _Preset:
    name = "tiny"


class _Models:
    preset = _Preset()


class ScaffoldPipeline:
    models = _Models()

    def __init__(self, groups) -> None:
        from safetensors.torch import load_file

        from engine.models import DiTConfig, MultiTalkDiT
        from engine.parallel.sequence import SequenceParallelDiT

        dit = MultiTalkDiT(DiTConfig.tiny())
        dit.load_state_dict(load_file(FIXTURES / "dit" / "reference_weights.safetensors"), strict=True)
        self.dit = SequenceParallelDiT(dit.eval(), groups.world) if groups.world_size > 1 else dit.eval()
        self.inputs = load_file(FIXTURES / "dit" / "forward_two_speakers.safetensors")
        self.step_s = float(os.environ.get("DUET_TEST_STEP_S", "0"))

    def render(self, request, *, on_progress, is_cancel_requested):
        from engine.sampling import RenderCancelled

        spec = request.spec
        steps = spec.render.steps
        names = ("timestep", "text_states", "image_states", "cond_latents", "audio", "region_masks")
        latent = self.inputs["latents"] * (1 + spec.render.seed % 7)
        for i in range(steps):
            if is_cancel_requested():
                raise RenderCancelled(i, steps)
            with torch.no_grad():
                latent = latent - 0.05 * self.dit(latent, *(self.inputs[n] for n in names))
            time.sleep(self.step_s)
            on_progress("render", i + 1, steps)
        speech_s = SPEECH_S_PER_LINE * len(spec.inputs.dialogue)
        request.work_dir.mkdir(parents=True, exist_ok=True)
        path = request.work_dir / "result.mp4"
        width, height = _write_mp4(path, latent, round(speech_s * FPS), speech_s)
        return ScaffoldOutput(path, None, speech_s, width, height)


def _write_mp4(path: Path, latent: torch.Tensor, num_frames: int, audio_s: float) -> tuple[int, int]:
    import av

    image = torch.sigmoid(latent[0, :3, 0]).permute(1, 2, 0).numpy()  # [h, w, 3]
    image = np.kron(image, np.ones((8, 8, 1)))  # 8x upscale to a codec-friendly size
    height, width = image.shape[:2]
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = container.add_stream("aac", rate=24000)
        for index in range(num_frames):
            frame = np.clip((image * 255 + index) % 256, 0, 255).astype(np.uint8)
            for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        samples = (0.1 * np.sin(np.arange(int(audio_s * 24000)) / 24000 * 2 * np.pi * 220)).astype(np.float32)
        audio_frame = av.AudioFrame.from_ndarray(samples[None], format="fltp", layout="mono")
        audio_frame.sample_rate = 24000
        for packet in audio.encode(audio_frame):
            container.mux(packet)
        for packet in audio.encode():
            container.mux(packet)
    return width, height


def _serve_with_scaffold() -> None:
    from engine import serve

    def make_request(assignment, work_dir):
        from storage.contract import JobSpec

        return ScaffoldRequest(JobSpec.from_json(assignment.spec_json), Path(assignment.frame_path), work_dir,
                               assignment.job_id)  # fmt: skip

    serve.build_pipeline = lambda options, settings, groups: ScaffoldPipeline(groups)
    serve.make_request = make_request
    serve.main(sys.argv[1:])


if __name__ == "__main__":
    _serve_with_scaffold()
