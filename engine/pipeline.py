"""The render pipeline: one job's spec and composed frame in, one MP4 out, in a single process.

`RenderPipeline` is built once per engine process (models loaded, LoRAs merged) and renders jobs one after the
other. `render` runs the stages of design.md in order, each a plain function of engine/stages: speech (Kokoro),
audio features (wav2vec2), conditioning (umT5, CLIP, VAE, region masks), the chunked denoising with its per-chunk
decode, and the mux (plus a copy fitted to the job's byte budget). It reports progress and honours cancellation
through the callables it is given, times every stage, and writes only inside the request's work directory.

It knows nothing about the queue, the database or other ranks: the serve loop claims the job, calls `render`,
stores the files and the result. A distributed serve loop passes its own `make_velocity` (sequence-parallel DiT).

Where a job differs from a run of the reference's `generate_multitalk.py` (on purpose, for a chat product):
- the prompt is the user's scene in a fixed two-person template (`conditioning.PROMPT_TEMPLATE`);
- the video lasts as long as the speech (nearest frame): the tracks get trailing silence so that the chunk plan
  covers it, and the frames are cut to it; the reference refuses speech under 3.3 s and drops the last 3 frames.
  Up to 81 frames run as one chunk (the reference's clip mode), longer ones stream, up to the job's max_seconds
  instead of the reference's 1000-frame cap;
- the MP4 is encoded once (x264 CRF, AAC at 48 kHz from Kokoro's 24 kHz soundtrack), not twice.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from PIL import Image

from engine.guidance import GuidanceConfig
from engine.offload import apply_low_memory
from engine.presets import EngineModels, LoraFile, Placement, Preset, get_preset, load_models
from engine.sampling import CancelCheck, default_shift
from engine.stages.audio import AudioFeatures, encode_tracks, target_frame_count
from engine.stages.clock import ProgressCallback, StageClock, ignore_progress
from engine.stages.conditioning import Conditioning, prepare_conditioning
from engine.stages.mux import DEFAULT_CRF, VIDEO_FPS, Mp4Writer, fit_to_bytes
from engine.stages.render import DiTVelocity, RenderConfig, VelocityFactory, render_video
from engine.stages.speech import Speech, SpeechLine, run_speech
from engine.stages.tts import KokoroTTS, load_tts, voice_lang_code
from storage.contract import Inputs, JobSpec, RenderSettings, Stage, StageTiming
from storage.errors import DuetError
from storage.media import FILE_NAMES

logger = logging.getLogger(__name__)


class RenderRefused(DuetError):
    """The job asks for something this engine cannot render (its length, a LoRA it has not loaded)."""


@dataclass(frozen=True)
class RenderRequest:
    """One job for the pipeline. `work_dir` is the job's own directory: outputs are written there."""

    spec: JobSpec
    frame_path: Path  # the composed reference frame (its boxes are in `spec.inputs`)
    work_dir: Path
    job_id: str = ""  # for logs only
    writes_video: bool = True  # False on ranks that render along but leave the MP4 to rank 0 (no mux stage)


@dataclass(frozen=True)
class RenderOutput:
    """What `render` produced. `timings` are per stage, summed over chunks, in pipeline order."""

    video_path: Path | None  # None when the request did not write the video
    duration_s: float
    width: int
    height: int
    num_frames: int
    fitted_path: Path | None  # the copy within `spec.render.fit_bytes`, when the job asked for one
    speech: Speech  # the soundtrack and each line's timing (captions)
    timings: tuple[StageTiming, ...]


@dataclass(frozen=True)
class PipelineOptions:
    """Engine-wide settings that jobs do not choose."""

    color_correction_strength: float = 1.0  # spec §6.5; 0 turns it off
    teacache_threshold: float = 0.2
    video_crf: int = DEFAULT_CRF
    video_preset: str = "medium"  # x264 speed/size trade-off
    # Low-memory options (engine/offload.py): the original service's `--num_persistent_param_in_dit` (None: the whole
    # DiT stays on the GPU; 0: only its embeddings and head) and `--offload_model` (GPU only), and VAE tiling.
    persistent_dit_params: int | None = None
    offload_models: bool = False
    vae_tiling: bool = False

    @property
    def is_low_memory(self) -> bool:
        """Whether the models are placed by `apply_low_memory` (VAE tiling alone places nothing)."""
        return self.persistent_dit_params is not None or self.offload_models


class RenderPipeline:
    """Models loaded once; `render` per job. Not thread-safe: one job at a time per process."""

    def __init__(
        self,
        models: EngineModels,
        tts: KokoroTTS,
        options: PipelineOptions = PipelineOptions(),
        *,
        make_velocity: VelocityFactory = DiTVelocity,
    ) -> None:
        self.models = models
        self.tts = tts
        self.options = options
        self.make_velocity = make_velocity

    @classmethod
    def from_preset(
        cls,
        preset: Preset | str,
        weights_dir: str | Path | None = None,
        *,
        placement: Placement = Placement(),
        loras: tuple[LoraFile, ...] = (),
        options: PipelineOptions = PipelineOptions(),
    ) -> RenderPipeline:
        """Load the preset's models and Kokoro (`tiny`: random weights, no files; `full`: `weights_dir`), placed for
        the options' low-memory settings.

        With a low-memory option on a GPU, checkpoints load into CPU memory first and `apply_low_memory` moves onto
        the GPU only what stays there: the whole DiT (38 GB in bf16) never has to fit. Random weights (tiny,
        full-random) are made on the GPU all the same and moved off it by `apply_low_memory`: initialising 20 B
        parameters on the CPU takes longer than a benchmark's whole run, and the GPU's caching allocator hands the
        memory back afterwards.
        """
        preset = get_preset(preset) if isinstance(preset, str) else preset
        on_gpu = torch.device(placement.device).type == "cuda"
        staged = options.is_low_memory and on_gpu and preset.needs_weights
        load_placement = replace(placement, device="cpu", t5_device="cpu") if staged else placement
        models = load_models(preset, weights_dir, placement=load_placement, loras=loras)
        models.placement = placement
        apply_low_memory(
            models, persistent_params=options.persistent_dit_params, offload_models=options.offload_models,
            vae_tiling=options.vae_tiling,
        )  # fmt: skip
        if options.is_low_memory and on_gpu:
            torch.cuda.empty_cache()  # what the models left behind on the GPU goes back to the driver
        tts = load_tts(weights_dir, preset=models.preset.name, device=placement.device)
        return cls(models, tts, options)

    def render(
        self,
        request: RenderRequest,
        *,
        on_progress: ProgressCallback = ignore_progress,
        is_cancel_requested: CancelCheck | None = None,
    ) -> RenderOutput:
        """Speech, then everything else (`render_speech`). Raises `RenderCancelled` at a sampler step boundary
        when `is_cancel_requested()` turns true, `RenderRefused` / `SpeechError` for a job it cannot do."""
        self.check_request(request.spec)
        clock = self._clock()
        with clock.measure(Stage.TTS):
            speech = self.speak(request.spec, on_progress)
        return self.render_speech(
            request, speech, on_progress=on_progress, is_cancel_requested=is_cancel_requested, clock=clock
        )

    def speak(self, spec: JobSpec, on_progress: ProgressCallback = ignore_progress) -> Speech:
        """The speech stage: the dialogue in each speaker's voice, laid out as a conversation."""
        inputs = spec.inputs
        return run_speech(
            speech_lines(inputs), {"A": inputs.voices.a, "B": inputs.voices.b}, self.tts,
            speed=inputs.speech_speed, seed=spec.render.seed, progress=on_progress,
        )  # fmt: skip

    def render_speech(
        self,
        request: RenderRequest,
        speech: Speech,
        *,
        on_progress: ProgressCallback = ignore_progress,
        is_cancel_requested: CancelCheck | None = None,
        clock: StageClock | None = None,
    ) -> RenderOutput:
        """Every stage after speech: the video for `speech`, muxed with its soundtrack into the work directory."""
        spec, models = request.spec, self.models
        self.check_request(spec)
        if speech.duration_s > spec.render.max_seconds:
            raise RenderRefused(
                f"The dialogue is {math.ceil(speech.duration_s)} s long; the limit is {spec.render.max_seconds:g} s.",
                f"speech of {speech.duration_s:.2f} s exceeds max_seconds {spec.render.max_seconds}",
            )
        clock = clock or self._clock()
        on_progress(Stage.AUDIO, 0, 1)
        with clock.measure(Stage.AUDIO):
            audio = encode_tracks(
                [speech.tracks["A"], speech.tracks["B"]], models.wav2vec, models.wav2vec_preprocessor,
                num_frames=target_frame_count(speech.duration_s), frame_num=models.preset.frame_num,
                sample_rate=speech.sample_rate,
            )  # fmt: skip
        on_progress(Stage.ENCODE, 0, 1)
        with clock.measure(Stage.ENCODE):
            conditioning = self._conditioning(request)
        if not request.writes_video:
            frames = self._render_frames(conditioning, audio, spec, clock, on_progress, is_cancel_requested)
            return RenderOutput(
                video_path=None, duration_s=frames.shape[0] / VIDEO_FPS, width=frames.shape[2], height=frames.shape[1],
                num_frames=frames.shape[0], fitted_path=None, speech=speech, timings=clock.timings(),
            )  # fmt: skip
        request.work_dir.mkdir(parents=True, exist_ok=True)
        with Mp4Writer(
            request.work_dir / FILE_NAMES["result"], speech.soundtrack, speech.soundtrack_rate, audio.num_frames,
            crf=self.options.video_crf, preset=self.options.video_preset,
        ) as writer:  # fmt: skip
            self._render_frames(conditioning, audio, spec, clock, on_progress, is_cancel_requested, writer)
            return self._write(request, writer, speech, clock, on_progress)

    def _render_frames(
        self, conditioning: Conditioning, audio: AudioFeatures, spec: JobSpec, clock: StageClock,
        on_progress: ProgressCallback, is_cancel_requested: CancelCheck | None, writer: Mp4Writer | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """The render stages proper (denoise, decode); the frames also go to `writer` as they are decoded."""
        models = self.models
        return render_video(
            dit=models.dit, vae=models.vae, clip=models.clip, conditioning=conditioning, audio=audio,
            config=self.render_config(spec.render), clock=clock, on_progress=on_progress,
            is_cancel_requested=is_cancel_requested, make_velocity=self.make_velocity,
            on_frames=None if writer is None else (lambda frames: writer.add(frames.numpy())),
        )  # fmt: skip

    def _conditioning(self, request: RenderRequest) -> Conditioning:
        """The job's frame at the preset's size for its bucket, its boxes, and its scene, encoded."""
        models, inputs = self.models, request.spec.inputs
        with Image.open(request.frame_path) as image:
            frame = image.convert("RGB")
        return prepare_conditioning(
            t5=models.t5, tokenizer=models.tokenizer, vae=models.vae, clip=models.clip, frame=frame,
            boxes=None if inputs.box_a is None else (inputs.box_a, inputs.box_b),
            size=models.preset.frame_size(request.spec.render.quality, frame.height, frame.width),
            scene=inputs.scene, frame_num=models.preset.frame_num, dtype=models.dit.dtype,
            device=models.placement.device, prompt_cache=models.prompt_cache,
        )  # fmt: skip

    def _write(
        self, request: RenderRequest, writer: Mp4Writer, speech: Speech, clock: StageClock,
        on_progress: ProgressCallback,
    ) -> RenderOutput:  # fmt: skip
        """The mux stage: the rest of the MP4 that `writer` has been encoding since the first frames (and the
        fitted copy the job asks for) in the work directory."""
        fit_bytes = request.spec.render.fit_bytes
        on_progress(Stage.MUX, 0, 1)
        with clock.measure(Stage.MUX):
            video = writer.finish()
            fitted = None
            if fit_bytes is not None:
                fitted = fit_to_bytes(video.path, fit_bytes, request.work_dir / FILE_NAMES["result_fitted"])
        on_progress(Stage.MUX, 1, 1)
        logger.info(
            "render finished",
            extra={"action": "render", "job_id": request.job_id, "frames": video.num_frames,
                   "size": [video.width, video.height],
                   "seconds": {timing.stage: round(timing.seconds, 2) for timing in clock.timings()}},
        )  # fmt: skip
        return RenderOutput(
            video_path=video.path, duration_s=video.duration_s, width=video.width, height=video.height,
            num_frames=video.num_frames, fitted_path=None if fitted is None else fitted.path, speech=speech,
            timings=clock.timings(),
        )  # fmt: skip

    def render_config(self, settings: RenderSettings) -> RenderConfig:
        """The sampler settings of a job: its own, the reference's defaults where it leaves them open."""
        preset = self.models.preset
        return RenderConfig(
            steps=settings.steps,
            shift=settings.sample_shift or default_shift(settings.quality),
            seed=settings.seed,
            size=settings.quality,
            guidance=GuidanceConfig(
                text_scale=settings.text_guidance, audio_scale=settings.audio_guidance, use_apg=settings.use_apg
            ),
            use_teacache=settings.use_teacache,
            teacache_threshold=self.options.teacache_threshold,
            color_correction_strength=self.options.color_correction_strength,
            frame_num=preset.frame_num,
            motion_frames=preset.motion_frames,
        )

    def check_request(self, spec: JobSpec) -> None:
        """Refuse a job whose LoRAs differ from those merged into this engine's DiT (names and scales)."""
        wanted = {(lora.name, lora.scale) for lora in spec.render.loras}
        loaded = {(lora.key, lora.scale) for lora in self.models.loras}
        if wanted != loaded:
            raise RenderRefused(
                "This video asks for a model variant (LoRA) that the render engine does not have loaded.",
                f"job LoRAs {sorted(wanted)} != engine LoRAs {sorted(loaded)}",
            )

    def _clock(self) -> StageClock:
        device = torch.device(self.models.placement.device)
        return StageClock(sync=torch.cuda.synchronize if device.type == "cuda" else None)


def speech_lines(inputs: Inputs) -> list[SpeechLine]:
    """The dialogue as the speech stage takes it, with each line's language.

    A job's language is `en`, `zh`, or `auto`. In `auto`, a line is read in its speaker's voice language: bot/core
    gives a speaker with any Chinese line a Mandarin voice at submission (and refuses an English voice for one),
    and the Mandarin reader also pronounces English words, so the voice decides and no text is guessed at here.
    """
    voices = {"A": inputs.voices.a, "B": inputs.voices.b}

    def language(speaker: str) -> str:
        if inputs.language != "auto":
            return inputs.language
        return "zh" if voice_lang_code(voices[speaker]) == "z" else "en"

    return [SpeechLine(line.speaker, line.text, language(line.speaker)) for line in inputs.dialogue]
