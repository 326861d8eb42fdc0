"""The whole render pipeline on the tiny preset: a job in, a real MP4 out, on the CPU.

The models are random (the video is noise) but every stage is the production one: Kokoro speech, wav2vec2
features, umT5/CLIP/VAE conditioning, the chunked MultiTalk sampler, VAE decode and the PyAV mux.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import engine.stages.render as render_module
from engine.cache import TeaCache
from engine.pipeline import PipelineOptions, RenderPipeline, RenderRefused, RenderRequest, speech_lines
from engine.presets import LoraFile
from engine.sampling import RenderCancelled
from engine.stages.decode import to_uint8_frames
from engine.stages.mux import Mp4Writer
from engine.stages.render import DiTVelocity
from storage.contract import (
    Box,
    Inputs,
    JobSpec,
    Line,
    LoraRef,
    MediaRef,
    RenderSettings,
    Requester,
    Stage,
    Voices,
)

FPS = 25
_MEDIA = {"size_bytes": 1, "sha256": "0" * 64}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a CPU shared with other test processes spinning
    OpenMP threads make them many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipeline() -> RenderPipeline:
    return RenderPipeline.from_preset("tiny")


@pytest.fixture(scope="module")
def frame_path(tmp_path_factory):
    """A composed frame at the 720p square bucket: person A left, person B right (as bot/core places them)."""
    image = Image.new("RGB", (960, 960), (70, 90, 120))
    draw = ImageDraw.Draw(image)
    draw.ellipse((120, 200, 380, 520), fill=(230, 190, 160))
    draw.ellipse((580, 200, 840, 520), fill=(200, 160, 130))
    path = tmp_path_factory.mktemp("frame") / "frame.png"
    image.save(path)
    return path


def job(*lines: tuple[str, str], **render) -> JobSpec:
    settings = {"quality": "720p", "steps": 3, **render}
    return JobSpec(
        requester=Requester(platform="cli", user_id="1", chat_id="1"),
        inputs=Inputs(
            photo_a=MediaRef(role="photo_a", **_MEDIA),
            photo_b=MediaRef(role="photo_b", **_MEDIA),
            frame=MediaRef(role="frame", **_MEDIA),
            box_a=Box(x0=40, y0=120, x1=460, y1=960),
            box_b=Box(x0=500, y0=120, x1=920, y1=960),
            dialogue=tuple(Line(speaker=speaker, text=text) for speaker, text in lines),
            scene="A quiet library",
        ),
        render=RenderSettings(**settings),
    )


SHORT = (("A", "Hi there!"), ("B", "Hello."))
LONG = (("A", "Hello there, how are you?"), ("B", "I am fine, thanks."))


@pytest.fixture(scope="module")
def long_speech(pipeline):
    """A dialogue of more than one chunk (81 frames), spoken once for the tests that reuse it."""
    speech = pipeline.speak(job(*LONG))
    assert 81 + 10 < speech.duration_s * FPS < 137 - 3 - 10  # two chunks
    return speech


@pytest.fixture(scope="module")
def short_speech(pipeline):
    """A dialogue of one chunk."""
    return pipeline.speak(job(*SHORT))


def _decoded_frames(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def test_a_job_renders_to_an_mp4_as_long_as_its_speech(pipeline, frame_path, tmp_path):
    progress = []
    spec = job(*SHORT, steps=4)
    output = pipeline.render(
        RenderRequest(spec=spec, frame_path=frame_path, work_dir=tmp_path / "work", job_id="j1"),
        on_progress=lambda stage, done, total: progress.append((stage, done, total)),
    )
    assert output.video_path == tmp_path / "work" / "result.mp4" and output.fitted_path is None
    assert (output.width, output.height) == (96, 96)  # the 960x960 bucket at the tiny preset's tenth
    speech_s = output.speech.duration_s
    assert 1.0 < speech_s < 3.2  # one chunk
    assert abs(output.duration_s - speech_s) <= 1 / FPS
    assert output.num_frames == round(speech_s * FPS)
    with av.open(str(output.video_path)) as container:
        video = container.streams.video[0]
        assert video.average_rate == FPS and video.frames == output.num_frames
        assert (video.codec_context.width, video.codec_context.height) == (96, 96)
        assert len(container.streams.audio) == 1
        assert abs(container.duration / av.time_base - speech_s) <= 1 / FPS
        assert "AI-generated" in container.metadata["comment"]
    frames = _decoded_frames(output.video_path)
    assert frames.shape == (output.num_frames, 96, 96, 3) and frames.std() > 0
    # Every stage ran, in order, and was timed.
    assert [timing.stage for timing in output.timings] == ["tts", "audio", "encode", "render", "decode", "mux"]
    assert all(timing.seconds > 0 for timing in output.timings)
    stages = list(dict.fromkeys(stage for stage, _, _ in progress))
    assert stages == [Stage.TTS, Stage.AUDIO, Stage.ENCODE, Stage.RENDER, Stage.DECODE, Stage.MUX]
    assert [done for stage, done, total in progress if stage == Stage.RENDER] == [1, 2, 3, 4]
    assert [line.speaker for line in output.speech.lines] == ["A", "B"]


def test_a_long_dialogue_streams_over_two_chunks(pipeline, frame_path, long_speech, tmp_path):
    progress = []
    spec = job(*LONG, steps=2, quality="480p")
    wide = tmp_path / "wide.png"
    Image.open(frame_path).resize((896, 448)).save(wide)
    output = pipeline.render_speech(
        RenderRequest(spec=spec, frame_path=wide, work_dir=tmp_path),
        long_speech,
        on_progress=lambda stage, done, total: progress.append((stage, done, total)),
    )
    assert (output.width, output.height) == (96, 48)  # the 448x896 bucket, aspect kept
    assert output.num_frames == round(long_speech.duration_s * FPS) > 81
    assert abs(output.duration_s - long_speech.duration_s) <= 1 / FPS
    steps = [(done, total) for stage, done, total in progress if stage == Stage.RENDER]
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]  # 2 steps x 2 chunks, counted over the whole job
    assert [(done, total) for stage, done, total in progress if stage == Stage.DECODE] == [(1, 2), (2, 2)]
    assert (Stage.ENCODE, 2, 2) in progress  # the second chunk re-encoded its motion frames
    assert _decoded_frames(output.video_path).shape[0] == output.num_frames


@pytest.fixture
def encoded(monkeypatch):
    """The frames each MP4 writer is handed, one array per video in order of writing (compared instead of the files:
    x264's bytes for the same frames vary between runs)."""
    pieces: dict[Path, list[np.ndarray]] = {}
    add = Mp4Writer.add

    def recording_add(writer: Mp4Writer, frames: np.ndarray) -> None:
        pieces.setdefault(writer.path, []).append(frames.copy())
        add(writer, frames)

    monkeypatch.setattr(Mp4Writer, "add", recording_add)
    return lambda: [np.concatenate(video) for video in pieces.values()]


def test_frames_reach_the_encoder_while_the_vae_decodes(pipeline, frame_path, long_speech, tmp_path, monkeypatch):
    events = []
    add = Mp4Writer.add
    monkeypatch.setattr(Mp4Writer, "add", lambda writer, frames: events.append(len(frames)) or add(writer, frames))
    request = RenderRequest(spec=job(*LONG, steps=1), frame_path=frame_path, work_dir=tmp_path)

    def on_progress(stage: Stage, done: int, total: int) -> None:
        if stage == Stage.DECODE:
            events.append(f"decoded {done}/{total}")

    output = pipeline.render_speech(request, long_speech, on_progress=on_progress)
    first_chunk = events[: events.index("decoded 1/2")]
    assert first_chunk[0] == 1 and set(first_chunk[1:]) == {4}  # one piece per latent frame, before the chunk ends
    assert sum(event for event in events if isinstance(event, int)) == output.num_frames


def test_the_next_chunk_starts_from_the_last_frames_of_the_one_before(
    pipeline, frame_path, long_speech, tmp_path, encoded, monkeypatch
):
    motion = []
    encode = render_module.encode_image_condition
    monkeypatch.setattr(render_module, "encode_image_condition", lambda vae, clip, frames, **named: (
        motion.append(frames.clone()) or encode(vae, clip, frames, **named)))  # fmt: skip
    request = RenderRequest(spec=job(*LONG, steps=1), frame_path=frame_path, work_dir=tmp_path)
    pipeline.render_speech(request, long_speech)
    (video,), (frames,) = encoded(), motion
    count = pipeline.models.preset.motion_frames
    first_chunk = pipeline.models.preset.frame_num
    # The colour-corrected frames the encoder got from the first chunk end with the motion frames, as uint8.
    np.testing.assert_array_equal(to_uint8_frames(frames).numpy(), video[first_chunk - count : first_chunk])


def test_same_seed_same_video_other_seed_other_video(pipeline, frame_path, long_speech, tmp_path, encoded):
    for seed, name in ((7, "a"), (7, "b"), (8, "c")):
        request = RenderRequest(spec=job(*LONG, steps=1, seed=seed), frame_path=frame_path, work_dir=tmp_path / name)
        pipeline.render_speech(request, long_speech)
    first, again, other = encoded()
    assert np.array_equal(first, again)
    assert first.shape == other.shape and not np.array_equal(first, other)


def test_cancel_stops_at_a_step_boundary(pipeline, frame_path, long_speech, tmp_path):
    steps_seen = []

    def is_cancel_requested() -> bool:
        return len(steps_seen) == 3  # after the first chunk's 2 steps and one of the second's

    request = RenderRequest(spec=job(*LONG, steps=2), frame_path=frame_path, work_dir=tmp_path)
    with pytest.raises(RenderCancelled) as raised:
        pipeline.render_speech(
            request, long_speech, is_cancel_requested=is_cancel_requested,
            on_progress=lambda stage, done, total: steps_seen.append(done) if stage == Stage.RENDER else None,
        )  # fmt: skip
    assert raised.value.step == 1  # before the second step of the second chunk
    assert steps_seen == [1, 2, 3]
    assert not (tmp_path / "result.mp4").exists()


def test_low_memory_options_render_the_same_frames(pipeline, frame_path, short_speech, tmp_path, encoded):
    """One DiT block kept, the other streamed (CPU to CPU here: it runs on a copy of its weights); --offload_model
    does nothing on a CPU device."""
    dit = pipeline.models.dit
    one_block = sum(p.numel() for p in dit.parameters()) - sum(p.numel() for p in dit.blocks[1:].parameters())
    options = PipelineOptions(persistent_dit_params=one_block, offload_models=True)
    low_memory = RenderPipeline.from_preset("tiny", options=options)
    streamed_weight = low_memory.models.dit.blocks[1].ffn[0].weight
    home = streamed_weight.data_ptr()
    running = []
    low_memory.models.dit.blocks[1].register_forward_pre_hook(lambda *_: running.append(streamed_weight.data_ptr()))
    for name, renderer in (("default", pipeline), ("low_memory", low_memory)):
        request = RenderRequest(spec=job(*SHORT, steps=1), frame_path=frame_path, work_dir=tmp_path / name)
        renderer.render_speech(request, short_speech)
    default, streamed = encoded()
    assert np.array_equal(default, streamed)
    assert running and home not in running and streamed_weight.data_ptr() == home


def test_teacache_apg_and_two_pass_guidance_reach_the_model(frame_path, pipeline, short_speech, tmp_path):
    """Also a rank that renders along without writing the video: no mux stage, no file."""
    calls, caches = [], []

    class Spy(DiTVelocity):
        def __call__(self, latent, t, /, *, branch, **conditioning):
            calls.append((branch, conditioning["audio"].shape[0]))
            return super().__call__(latent, t, branch=branch, **conditioning)

    def make_velocity(dit, teacache):
        caches.append(teacache)
        return Spy(dit, teacache)

    spied = RenderPipeline(pipeline.models, pipeline.tts, make_velocity=make_velocity)
    spec = job(*SHORT, steps=6, use_teacache=True, use_apg=True, text_guidance=1.0, audio_guidance=2.0)
    request = RenderRequest(spec=spec, frame_path=frame_path, work_dir=tmp_path / "work", writes_video=False)
    output = spied.render_speech(request, short_speech)
    assert {branch for branch, _ in calls} == {"cond", "drop_audio"}
    assert all(speakers == (2 if branch == "cond" else 1) for branch, speakers in calls)  # dropped audio: 1 stream
    assert len(calls) == 2 * 6  # 2 passes x 6 steps
    (cache,) = caches
    assert isinstance(cache, TeaCache) and cache.size == "720p"
    assert sum(cache.computed.values()) + sum(cache.skipped.values()) == len(calls)
    assert output.video_path is None and not (tmp_path / "work").exists()
    assert output.num_frames == round(short_speech.duration_s * FPS) and (output.width, output.height) == (96, 96)
    assert "mux" not in {timing.stage for timing in output.timings}


def test_fitted_copy_when_the_job_asks_for_one(pipeline, frame_path, short_speech, tmp_path):
    spec = job(*SHORT, steps=1, fit_bytes=40_000)
    output = pipeline.render_speech(RenderRequest(spec=spec, frame_path=frame_path, work_dir=tmp_path), short_speech)
    assert output.video_path.stat().st_size > 40_000
    assert output.fitted_path == tmp_path / "result_fitted.mp4"
    assert output.fitted_path.stat().st_size <= 40_000
    assert "mux" in {timing.stage for timing in output.timings}


def test_jobs_the_engine_cannot_render_are_refused_before_any_model_runs(pipeline, frame_path, long_speech, tmp_path):
    request = RenderRequest(spec=job(*LONG, max_seconds=2.0), frame_path=frame_path, work_dir=tmp_path)
    with pytest.raises(RenderRefused, match="limit is 2 s"):
        pipeline.render_speech(request, long_speech)
    with_lora = job(*LONG, loras=(LoraRef(name="fusionx"),))
    with pytest.raises(RenderRefused, match="LoRA"):
        pipeline.render(RenderRequest(spec=with_lora, frame_path=frame_path, work_dir=tmp_path))
    spec = job(*LONG)
    loaded = RenderPipeline(replace(pipeline.models, loras=(LoraFile(path=tmp_path / "fusionx.safetensors"),)),
                            pipeline.tts)  # fmt: skip
    with pytest.raises(RenderRefused, match="LoRA"):
        loaded.render_speech(RenderRequest(spec=spec, frame_path=frame_path, work_dir=tmp_path), long_speech)
    assert not list(tmp_path.iterdir())


def test_each_line_is_read_in_its_language():
    spec = job(("A", "Hello!"), ("B", "你好！"))
    zh_voice = spec.inputs.model_copy(update={"voices": Voices(a="af_heart", b="zf_xiaoxiao")})
    assert [line.language for line in speech_lines(zh_voice)] == ["en", "zh"]
    forced = spec.inputs.model_copy(update={"language": "zh"})
    assert [line.language for line in speech_lines(forced)] == ["zh", "zh"]
    assert [(line.speaker, line.text) for line in speech_lines(spec.inputs)] == [("A", "Hello!"), ("B", "你好！")]
