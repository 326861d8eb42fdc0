"""The MP4 writer: what players and chat platforms read back, the duration rule, and fitting to a byte budget."""

from __future__ import annotations

import json
import shutil
import subprocess

import av
import numpy as np
import pytest

from engine.stages.mux import AUDIO_RATE, FitError, Mp4Writer, fit_audio, fit_to_bytes, mux_mp4, probe

SAMPLE_RATE = 16000


def _frames(count: int, height: int = 64, width: int = 96) -> np.ndarray:
    """A moving gradient with grain: compressible like a video, not like noise."""
    rng = np.random.default_rng(0)
    x = np.arange(width)[None, None, :] + 3 * np.arange(count)[:, None, None]
    base = (np.sin(x / 9.0) * 80 + 128 + np.arange(height)[None, :, None] * 0.5)[..., None].repeat(3, axis=-1)
    return np.clip(base + rng.normal(0, 6, (count, height, width, 3)), 0, 255).astype(np.uint8)


def _tone(seconds: float, rate: int = SAMPLE_RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def _decode(path):
    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    with av.open(str(path)) as container:
        audio = np.concatenate([frame.to_ndarray().reshape(-1) for frame in container.decode(audio=0)])
    return np.stack(frames), audio


def test_mp4_is_h264_yuv420p_aac_25fps_with_the_ai_notice(tmp_path):
    info = mux_mp4(_frames(40), _tone(1.6), SAMPLE_RATE, tmp_path / "out.mp4")
    assert (info.width, info.height, info.fps, info.num_frames, info.has_audio) == (96, 64, 25.0, 40, True)
    assert info.duration_s == pytest.approx(1.6, abs=1e-3)
    assert "AI-generated" in info.tags["comment"] and "AI-generated" in info.tags["description"]
    with av.open(str(info.path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert video.codec_context.name == "h264" and video.codec_context.pix_fmt == "yuv420p"
        assert audio.codec_context.name == "aac" and audio.codec_context.sample_rate == AUDIO_RATE
    data = info.path.read_bytes()
    assert 0 < data.find(b"moov") < data.find(b"mdat")  # faststart: the index comes first
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.skipif(shutil.which("ffprobe") is None, reason="ffprobe is not installed")
def test_ffprobe_reads_the_same_duration_for_both_streams(tmp_path):
    info = mux_mp4(_frames(53), _tone(2.0), SAMPLE_RATE, tmp_path / "out.mp4")
    report = json.loads(subprocess.run(
        ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", str(info.path)],
        capture_output=True, text=True, check=True,
    ).stdout)  # fmt: skip
    durations = {stream["codec_type"]: float(stream["duration"]) for stream in report["streams"]}
    assert durations == {"video": pytest.approx(53 / 25, abs=1e-3), "audio": pytest.approx(53 / 25, abs=1e-3)}
    assert float(report["format"]["duration"]) == pytest.approx(53 / 25, abs=1e-3)
    assert "AI-generated" in report["format"]["tags"]["comment"]


@pytest.mark.parametrize("audio_s", [1.0, 1.6, 2.5])
def test_duration_is_the_video_length_whatever_the_audio_length(tmp_path, audio_s):
    """The soundtrack is cut or padded to the frames, so the file is exactly frames / 25 s long."""
    info = mux_mp4(_frames(40), _tone(audio_s), SAMPLE_RATE, tmp_path / "out.mp4")
    assert info.duration_s == pytest.approx(40 / 25, abs=1e-3)


def test_speech_starts_with_the_first_frame(tmp_path):
    """The AAC encoder's priming samples must not delay the speech: the decoded audio starts with the input."""
    audio = np.zeros(int(1.6 * SAMPLE_RATE), np.float32)
    audio[: SAMPLE_RATE // 10] = _tone(0.1)  # a tone in the first 100 ms, then silence
    path = mux_mp4(_frames(40), audio, SAMPLE_RATE, tmp_path / "out.mp4").path
    _, decoded = _decode(path)
    loud = np.flatnonzero(np.abs(decoded) > 0.05)
    assert loud[0] < AUDIO_RATE * 0.005  # within 5 ms of the start
    assert loud[-1] == pytest.approx(AUDIO_RATE * 0.1, abs=AUDIO_RATE * 0.01)


def test_fit_audio_resamples_and_matches_the_frame_count():
    audio = fit_audio(_tone(1.0), SAMPLE_RATE, num_frames=30)
    assert audio.dtype == np.float32 and audio.shape == (30 * AUDIO_RATE // 25,)
    assert np.abs(audio[: AUDIO_RATE]).max() == pytest.approx(0.3, abs=0.02)
    assert not audio[AUDIO_RATE + 100 :].any()  # padded with silence after the 1 s of input


def test_mux_refuses_frames_that_are_not_rgb_bytes(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        mux_mp4(_frames(4).astype(np.float32), _tone(0.2), SAMPLE_RATE, tmp_path / "out.mp4")


def test_fitted_copy_is_under_the_budget_and_still_plays(tmp_path):
    source = mux_mp4(_frames(75, 128, 192), _tone(3.0), SAMPLE_RATE, tmp_path / "out.mp4", crf=10)
    budget = source.size_bytes // 5
    fitted = fit_to_bytes(source.path, budget)
    assert fitted.path == tmp_path / "out_fitted.mp4"
    assert fitted.size_bytes <= budget
    assert (fitted.num_frames, fitted.fps, fitted.has_audio) == (75, 25.0, True)
    assert fitted.duration_s == pytest.approx(3.0, abs=1e-3)
    assert "AI-generated" in fitted.tags["comment"]
    frames, audio = _decode(fitted.path)
    assert frames.shape[0] == 75 and audio.size >= 3.0 * AUDIO_RATE
    assert source.path.stat().st_size == source.size_bytes  # the original is untouched


def test_a_tight_budget_scales_the_frame_down(tmp_path):
    source = mux_mp4(_frames(75, 192, 288), _tone(3.0), SAMPLE_RATE, tmp_path / "out.mp4", crf=10)
    fitted = fit_to_bytes(source.path, 30_000, tmp_path / "small.mp4")
    assert fitted.size_bytes <= 30_000 and fitted.num_frames == 75
    assert fitted.width < 288 and fitted.height < 192 and fitted.width % 2 == 0 and fitted.height % 2 == 0
    assert fitted.width / fitted.height == pytest.approx(1.5, rel=0.05)


def test_a_file_within_budget_is_copied(tmp_path):
    source = mux_mp4(_frames(10), _tone(0.4), SAMPLE_RATE, tmp_path / "out.mp4")
    fitted = fit_to_bytes(source.path, source.size_bytes, tmp_path / "copy.mp4")
    assert fitted.path.read_bytes() == source.path.read_bytes()


def test_an_impossible_budget_is_refused(tmp_path):
    source = mux_mp4(_frames(50), _tone(2.0), SAMPLE_RATE, tmp_path / "out.mp4")
    with pytest.raises(FitError):
        fit_to_bytes(source.path, 2_000, tmp_path / "tiny.mp4")
    assert not (tmp_path / "tiny.mp4").exists()
    assert probe(source.path).num_frames == 50


def test_frames_handed_over_in_pieces_make_the_same_video_as_all_at_once(tmp_path):
    frames, tone = _frames(37), _tone(1.48)
    whole = mux_mp4(frames, tone, SAMPLE_RATE, tmp_path / "whole.mp4")
    with Mp4Writer(tmp_path / "pieces.mp4", tone, SAMPLE_RATE, 37) as writer:
        bounds = [0, 1, 5, 9, 21, 33, 37]  # a first frame, then groups of 4 like the VAE's, then bigger ones
        for start, end in zip(bounds, bounds[1:]):
            writer.add(frames[start:end])
        streamed = writer.finish()
    assert (streamed.num_frames, streamed.width, streamed.height) == (whole.num_frames, whole.width, whole.height)
    assert streamed.duration_s == pytest.approx(whole.duration_s, abs=1e-6)
    streamed_frames, streamed_audio = _decode(streamed.path)
    whole_frames, whole_audio = _decode(whole.path)
    # x264 with threads is not bit-repeatable (the two files differ by 0-1.1 levels on average between runs), but
    # the same frames at the same quality lose the same detail: about 5 levels of the grain.
    streamed_error = np.abs(streamed_frames.astype(int) - frames.astype(int)).mean()
    whole_error = np.abs(whole_frames.astype(int) - frames.astype(int)).mean()
    assert streamed_error < 6.0 and abs(streamed_error - whole_error) < 0.1
    np.testing.assert_allclose(streamed_audio, whole_audio, atol=1e-4)
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(RuntimeError, match="already finished"):
        writer.add(frames[:1])  # would start a second encoder over the finished file


def test_a_writer_left_on_an_error_leaves_no_file(tmp_path):
    target = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="render failed"), Mp4Writer(target, _tone(1.0), SAMPLE_RATE, 25) as writer:
        writer.add(_frames(8))
        raise RuntimeError("render failed")
    assert not target.exists() and not list(tmp_path.iterdir())


def test_a_writer_given_another_number_of_frames_than_announced_refuses_and_leaves_no_file(tmp_path):
    writer = Mp4Writer(tmp_path / "out.mp4", _tone(1.0), SAMPLE_RATE, 25)
    writer.add(_frames(24))
    with pytest.raises(ValueError, match="25 frames and got 24"):
        writer.finish()
    assert not list(tmp_path.iterdir())


def test_an_encoder_error_reaches_finish(tmp_path):
    writer = Mp4Writer(tmp_path / "missing" / "out.mp4", _tone(0.4), SAMPLE_RATE, 10)  # no such directory
    writer.add(_frames(10))
    with pytest.raises(OSError):
        writer.finish()
