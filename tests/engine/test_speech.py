"""The speech stage: timeline, per-speaker tracks, the mix, line timings, language routing, resampling.

Runs on the tiny Kokoro (the real `KModel` class with random weights, real G2P): its audio is noise, but
its lengths follow the text exactly as the real model's do, which is all the timeline depends on.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from engine.stages.speech import (
    GRID_HZ,
    SAMPLE_RATE,
    Pauses,
    Speech,
    SpeechLine,
    line_seed,
    resample,
    run_speech,
    speech_lines,
)
from engine.stages.tts import SAMPLE_RATE as TTS_RATE
from engine.stages.tts import KokoroTTS, SpeechError, load_tts
from storage.contract import Inputs, Line, MediaRef, Stage

PAUSES = Pauses(lead_s=0.15, turn_s=0.5, quick_reply_s=0.25, quick_reply_max_s=1.0, same_speaker_s=0.35, tail_s=0.6)
VOICES = {"A": "zf_xiaoxiao", "B": "am_adam"}
DIALOGUE = (
    SpeechLine("A", "Do you know it?", "en"),
    SpeechLine("B", "Yes!", "en"),  # a quick reply
    SpeechLine("B", "I read it twice.", "en"),  # the same speaker goes on
    SpeechLine("A", "我也是，真的很好看。", "zh"),  # a full turn, in Mandarin
)


@pytest.fixture(scope="module")
def tts() -> KokoroTTS:
    return load_tts(None, preset="tiny", seed=11)


@pytest.fixture(scope="module")
def spoken(tts) -> tuple[Speech, list[tuple[dict, np.ndarray]]]:
    """The dialogue's speech, and each synthesis call the stage made (its arguments and the audio returned)."""
    calls = []
    synthesize = tts.synthesize

    def recording(text, **kwargs):
        audio = synthesize(text, **kwargs)
        calls.append(({"text": text, **kwargs}, audio))
        return audio

    tts.synthesize = recording
    try:
        return run_speech(DIALOGUE, VOICES, tts, seed=4, pauses=PAUSES), calls
    finally:
        del tts.synthesize


@pytest.fixture(scope="module")
def speech(spoken) -> Speech:
    return spoken[0]


@pytest.fixture(scope="module")
def clips(spoken) -> list[np.ndarray]:
    return [audio for _, audio in spoken[1]]


def test_each_line_is_spoken_alone_with_its_speakers_voice_and_own_seed(spoken):
    assert [arguments for arguments, _ in spoken[1]] == [
        {"text": line.text, "voice": VOICES[line.speaker], "language": line.language, "speed": 1.0,
         "seed": line_seed(4, index)}
        for index, line in enumerate(DIALOGUE)
    ]  # fmt: skip
    assert len({line_seed(4, index) for index in range(100)} | {line_seed(5, 0)}) == 101


def _span(speech: Speech, index: int, rate: int) -> slice:
    line = speech.lines[index]
    return slice(round(line.start_s * rate), round(line.end_s * rate))


def test_tracks_mix_and_soundtrack_cover_the_same_time(speech):
    length = speech.mixed.shape[0]
    assert speech.sample_rate == SAMPLE_RATE == 16_000 and speech.soundtrack_rate == TTS_RATE == 24_000
    assert set(speech.tracks) == {"A", "B"}
    assert all(track.shape == (length,) and track.dtype == np.float32 for track in speech.tracks.values())
    assert speech.soundtrack.shape == (length * 3 // 2,)
    assert speech.duration_s == length / 16_000 == speech.soundtrack.shape[0] / 24_000


def test_lengths_add_up_to_lines_pauses_and_padding(speech, clips):
    grid_units = [-(-clip.shape[0] // 3) for clip in clips]  # 24 kHz samples -> 1/8000 s, rounded up
    gaps = [PAUSES.lead_s, PAUSES.quick_reply_s, PAUSES.same_speaker_s, PAUSES.turn_s]
    total = sum(grid_units) + round((sum(gaps) + PAUSES.tail_s) * GRID_HZ)
    assert speech.mixed.shape[0] == total * 2
    for line, units in zip(speech.lines, grid_units, strict=True):
        assert round((line.end_s - line.start_s) * GRID_HZ) == units


def test_pauses_follow_who_speaks_next_and_how_long(speech, clips):
    assert clips[1].shape[0] / TTS_RATE <= PAUSES.quick_reply_max_s < clips[3].shape[0] / TTS_RATE
    lines = speech.lines
    gaps = [lines[0].start_s] + [after.start_s - before.end_s for before, after in itertools.pairwise(lines)]
    assert gaps == pytest.approx([0.15, 0.25, 0.35, 0.5], abs=1e-9)
    assert speech.duration_s - lines[-1].end_s == pytest.approx(0.6, abs=1e-9)


def test_line_timings_are_ordered_and_keep_the_text(speech):
    assert [(line.index, line.speaker, line.text) for line in speech.lines] == [
        (index, line.speaker, line.text) for index, line in enumerate(DIALOGUE)
    ]
    for line in speech.lines:
        assert 0 < line.start_s < line.end_s <= speech.duration_s
    for before, after in itertools.pairwise(speech.lines):
        assert before.end_s < after.start_s


def test_each_track_is_exactly_silent_outside_its_speakers_lines(speech):
    for speaker, track in speech.tracks.items():
        own = np.zeros(track.shape[0], dtype=bool)
        for index, line in enumerate(speech.lines):
            if line.speaker == speaker:
                own[_span(speech, index, SAMPLE_RATE)] = True
                assert np.abs(track[_span(speech, index, SAMPLE_RATE)]).max() > 0
        assert not track[~own].any()


def test_the_mix_is_the_sum_of_the_tracks(speech):
    np.testing.assert_array_equal(speech.mixed, speech.tracks["A"] + speech.tracks["B"])


def test_each_lines_audio_is_placed_unchanged_at_both_rates(speech, clips):
    soundtrack = speech.soundtrack
    outside = np.ones(soundtrack.shape[0], dtype=bool)
    for index, (line, clip) in enumerate(zip(speech.lines, clips, strict=True)):
        span = _span(speech, index, TTS_RATE)
        np.testing.assert_array_equal(soundtrack[span][: clip.shape[0]], clip)
        assert not soundtrack[span][clip.shape[0] :].any()  # grid padding, under 3 samples
        outside[span] = False
        padded = np.pad(clip, (0, -clip.shape[0] % 3))
        np.testing.assert_array_equal(speech.tracks[line.speaker][_span(speech, index, SAMPLE_RATE)],
                                      resample(padded, TTS_RATE, SAMPLE_RATE))  # fmt: skip
    assert not soundtrack[outside].any()


def test_arrays_cannot_be_changed_by_a_later_stage(speech):
    with pytest.raises(ValueError):
        speech.mixed[0] = 1.0
    with pytest.raises(ValueError):
        speech.tracks["A"][0] = 1.0
    with pytest.raises(TypeError):
        speech.tracks["C"] = speech.mixed  # type: ignore[index]


def test_lines_go_to_their_speakers_voice_and_language_pipeline(tts, monkeypatch):
    calls = []
    phonemize = tts.phonemizer

    def recording(text, lang_code):
        calls.append((text, lang_code))
        return phonemize(text, lang_code)

    monkeypatch.setattr(tts, "phonemizer", recording)
    voices = {"A": "bf_emma", "B": "zm_yunxi"}
    run_speech([SpeechLine("A", "Hi.", "en"), SpeechLine("B", "你好。", "zh"), SpeechLine("B", "Okay.", "en")],
               voices, tts)  # fmt: skip
    assert calls == [("Hi.", "b"), ("你好。", "z"), ("Okay.", "a")]


@pytest.mark.parametrize(
    ("language", "expected"), [("auto", ["en", "zh", "zh", "en"]), ("en", ["en", "zh", "zh", "en"]), ("zh", ["zh"] * 4)]
)
def test_job_lines_get_the_language_submission_checked_them_with(language, expected):
    photo = {"size_bytes": 1, "sha256": "0" * 64}
    inputs = Inputs(
        photo_a=MediaRef(role="photo_a", **photo),
        photo_b=MediaRef(role="photo_b", **photo),
        dialogue=tuple(
            Line(speaker=speaker, text=text)
            for speaker, text in [("A", "Do you know it?"), ("B", "我也是。"), ("A", "We ate at 北京饭店 tonight."),
                                  ("B", "The 龍 symbol is old.")]
        ),
        language=language,
    )  # fmt: skip
    lines = speech_lines(inputs)
    assert [line.language for line in lines] == expected
    assert [(line.speaker, line.text) for line in lines] == [(line.speaker, line.text) for line in inputs.dialogue]


def test_a_chinese_line_for_an_english_voice_stops_the_stage_before_any_synthesis(tts, monkeypatch):
    monkeypatch.setattr(tts, "synthesize", lambda *args, **kwargs: pytest.fail("synthesized before checking"))
    lines = [SpeechLine("A", "Hello.", "en"), SpeechLine("B", "你好。", "zh")]
    with pytest.raises(SpeechError, match="Mandarin voice"):
        run_speech(lines, {"A": "af_heart", "B": "am_adam"}, tts)


def test_missing_voices_and_empty_dialogues_are_refused(tts):
    with pytest.raises(SpeechError) as raised:
        run_speech([SpeechLine("A", "Hi.", "en"), SpeechLine("B", "Hi.", "en")], {"A": "af_heart"}, tts)
    assert raised.value.admin_detail == "no voice for speaker B"
    with pytest.raises(SpeechError):
        run_speech([], VOICES, tts)


def test_the_same_seed_gives_the_same_speech(tts):
    lines = DIALOGUE[1:2]
    first = run_speech(lines, VOICES, tts, seed=9)
    again = run_speech(lines, VOICES, tts, seed=9)
    other = run_speech(lines, VOICES, tts, seed=10)
    np.testing.assert_array_equal(first.mixed, again.mixed)
    np.testing.assert_array_equal(first.soundtrack, again.soundtrack)
    assert first.lines == again.lines
    assert not np.array_equal(first.soundtrack, other.soundtrack)


def test_progress_is_reported_per_line_and_can_stop_the_stage(tts):
    seen = []
    lines = [SpeechLine("A", "Hi.", "en"), SpeechLine("B", "Yes!", "en")]
    run_speech(lines, VOICES, tts, progress=lambda stage, done, total: seen.append((stage, done, total)))
    assert seen == [(Stage.TTS, 1, 2), (Stage.TTS, 2, 2)]

    class Cancelled(Exception):
        pass

    def cancel(stage, done, total):
        raise Cancelled

    with pytest.raises(Cancelled):
        run_speech(lines, VOICES, tts, progress=cancel)


def test_resampling_keeps_speech_band_tones_and_removes_what_16k_cannot_hold():
    seconds = np.arange(2 * 24_000) / 24_000
    for hz in (200, 1000, 3000, 6000):
        tone = np.sin(2 * np.pi * hz * seconds).astype(np.float32)
        out = resample(tone, 24_000, 16_000)
        expected = np.sin(2 * np.pi * hz * np.arange(out.shape[0]) / 16_000)
        middle = slice(1000, -1000)  # away from the edges, where the signal itself starts and stops
        assert np.abs(out[middle] - expected[middle]).max() < 1e-3
    for hz in (9000, 11000):  # above 8 kHz: would fold back into the speech band as aliases
        out = resample(np.sin(2 * np.pi * hz * seconds).astype(np.float32), 24_000, 16_000)
        assert np.sqrt(np.mean(out[1000:-1000] ** 2)) < 1e-3


def test_resampling_lengths_and_identity():
    assert resample(np.ones(300, dtype=np.float32), 24_000, 16_000).shape == (200,)
    assert resample(np.ones(301, dtype=np.float32), 24_000, 16_000).shape == (201,)
    assert resample(np.ones(200, dtype=np.float32), 16_000, 24_000).shape == (300,)
    assert not resample(np.zeros(30, dtype=np.float32), 24_000, 16_000).any()
    signal = np.random.default_rng(0).standard_normal(99).astype(np.float32)
    np.testing.assert_array_equal(resample(signal, 16_000, 16_000), signal)
