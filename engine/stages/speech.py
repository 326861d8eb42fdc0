"""Speech stage: dialogue lines -> Kokoro audio per line -> a timeline -> one track per speaker + the mix.

Owns the timeline (who speaks when, the pauses between turns) and the sample-exact layout of the tracks.
Each line is synthesized alone (`engine.stages.tts`), at 24 kHz, with its speaker's voice and a seed of its
own, then placed after a pause. Every track has the whole dialogue's length and is exactly zero while the
other person talks, which is what MultiTalk's per-person audio conditioning expects (spec §2.2, §9).

Differences from the reference's TTS mode, on purpose: the reference butts turns together with no pause
and no lead-in; Duet inserts `Pauses` so a dialogue sounds like two people talking. As in the reference,
TTS audio is not loudness-normalized (the −23 LUFS step applies to uploaded audio files only, spec §2.1,
pitfall 18) and the soundtrack is the 24 kHz sum of the two speakers.

Sample layout: every offset and length lies on an 8 kHz grid (1/8000 s = 3 samples at 24 kHz, 2 at 16 kHz),
so the 16 kHz tracks and the 24 kHz soundtrack describe the same instants without rounding drift. Lines are
resampled to 16 kHz one at a time, never the assembled track, so no filter ringing leaks into the silence.
No file I/O and no database: arrays in, arrays out; the serve loop writes what it wants to keep.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import torch
import torch.nn.functional as F

# The one exception to "the engine never imports bot": the per-line language rule lives in bot/core/voices.py
# (pure Python), where submission validates voices against it; the job spec keeps the user's choice, not the
# per-line outcome, so the engine applies the same rule again rather than a copy of it.
from storage.language import detect_language
from engine.stages.tts import SAMPLE_RATE as TTS_SAMPLE_RATE
from engine.stages.tts import KokoroTTS, Language, SpeechError, pipeline_lang_code
from storage.contract import Inputs, Speaker, Stage

SAMPLE_RATE = 16_000  # what wav2vec2 reads
GRID_HZ = math.gcd(SAMPLE_RATE, TTS_SAMPLE_RATE)  # 8000: both rates are whole multiples of it
SPEAKERS: tuple[Speaker, ...] = ("A", "B")


# ---------------------------------------------------------------------------------------------------
# Resampling
# ---------------------------------------------------------------------------------------------------


def _lowpass(up: int, down: int, zero_crossings: int, rolloff: float, beta: float) -> torch.Tensor:
    """Kaiser-windowed sinc for rate `up/down`, at the up-sampled rate, cut at `rolloff` x the lower Nyquist."""
    cutoff = rolloff * 0.5 / max(up, down)  # cycles per up-sampled sample
    half = math.ceil(zero_crossings / (2 * cutoff))
    n = torch.arange(-half, half + 1, dtype=torch.float64)
    taps = 2 * cutoff * torch.sinc(2 * cutoff * n) * torch.kaiser_window(2 * half + 1, periodic=False, beta=beta,
                                                                         dtype=torch.float64)  # fmt: skip
    return taps * up  # zero-stuffing divides the signal's energy by `up`


def resample(
    audio: np.ndarray,
    from_hz: int,
    to_hz: int,
    *,
    zero_crossings: int = 48,
    rolloff: float = 0.9,
    beta: float = 8.6,
) -> np.ndarray:
    """Band-limited polyphase resampling of a mono signal (zero-phase, output `ceil(n * to_hz / from_hz)` long).

    torchaudio is not a dependency; this is the textbook scheme: insert `up - 1` zeros per sample, low-pass
    with a Kaiser-windowed sinc (cut-off at 90% of the lower Nyquist, 7.2 kHz for 24 -> 16 kHz; about 85 dB
    stop band for beta 8.6), keep every `down`-th sample (a strided convolution computes only those).
    """
    if from_hz == to_hz:
        return audio.astype(np.float32, copy=True)
    g = math.gcd(from_hz, to_hz)
    up, down = to_hz // g, from_hz // g
    taps = _lowpass(up, down, zero_crossings, rolloff, beta)
    half = (taps.numel() - 1) // 2
    signal = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float64))
    stuffed = torch.zeros(signal.numel() * up, dtype=torch.float64)
    stuffed[::up] = signal
    out = F.conv1d(stuffed.view(1, 1, -1), taps.view(1, 1, -1), padding=half, stride=down)  # symmetric taps
    length = -(-signal.numel() * up // down)
    return out.view(-1)[:length].to(torch.float32).numpy()


# ---------------------------------------------------------------------------------------------------
# Timeline
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpeechLine:
    """One line to speak. `language` is the line's own (bot/core decides it at submission)."""

    speaker: Speaker
    text: str
    language: Language


def speech_lines(inputs: Inputs) -> list[SpeechLine]:
    """The job's dialogue with each line's language.

    `zh` reads every line as Mandarin. `en` and `auto` detect per line: submission already refused Chinese lines
    under `en`, and should one get through anyway, its English voice refuses it (SpeechError) instead of
    dropping the characters.
    """
    return [
        SpeechLine(line.speaker, line.text, "zh" if inputs.language == "zh" else detect_language(line.text))
        for line in inputs.dialogue
    ]


@dataclass(frozen=True)
class Pauses:
    """Silence in a dialogue, in seconds. Kokoro's own edges add roughly another 0.1 s per gap.

    A change of speaker waits `turn_s`, or `quick_reply_s` when the reply is short (a "Yes!" comes fast);
    a speaker going on with a second line waits `same_speaker_s`.
    """

    lead_s: float = 0.2
    turn_s: float = 0.4
    quick_reply_s: float = 0.2
    quick_reply_max_s: float = 1.0  # a reply with at most this much speech is a quick one
    same_speaker_s: float = 0.3
    tail_s: float = 0.4

    def before(self, previous: Speaker | None, speaker: Speaker, speech_s: float) -> float:
        """The pause before a line of `speech_s` seconds by `speaker`, after a line by `previous` (None: first)."""
        if previous is None:
            return self.lead_s
        if previous == speaker:
            return self.same_speaker_s
        return self.quick_reply_s if speech_s <= self.quick_reply_max_s else self.turn_s


@dataclass(frozen=True)
class LineTiming:
    """Where a line's audio sits in the dialogue (for captions); `end_s` includes Kokoro's edge silence."""

    index: int
    speaker: Speaker
    text: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class Speech:
    """The speech of a dialogue. Arrays are mono float32 and read-only.

    - `tracks[speaker]`: that speaker's voice at `sample_rate` (16 kHz), exact zeros while the other talks;
      the audio-features stage reads these.
    - `mixed`: `tracks["A"] + tracks["B"]`, same rate and length.
    - `soundtrack`: the same mix at Kokoro's native `soundtrack_rate` (24 kHz), for the MP4 (the reference
      muxes its 24 kHz `sum.wav`); it is exactly `len(mixed) * 3 / 2` samples, the same duration.
    """

    sample_rate: int
    tracks: Mapping[Speaker, np.ndarray]
    mixed: np.ndarray
    soundtrack: np.ndarray
    soundtrack_rate: int
    lines: tuple[LineTiming, ...]
    duration_s: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "duration_s", self.mixed.shape[0] / self.sample_rate)


def _grid_units(seconds: float) -> int:
    return round(seconds * GRID_HZ)


def _pad_to_grid(audio: np.ndarray) -> np.ndarray:
    step = TTS_SAMPLE_RATE // GRID_HZ
    return np.pad(audio, (0, -audio.shape[0] % step))


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def line_seed(seed: int, index: int) -> int:
    """Each line's own seed, so one line's audio does not depend on the lines before it."""
    return (seed * 1_000_003 + index) % 2**63


def run_speech(
    lines: Sequence[SpeechLine],
    voices: Mapping[Speaker, str],
    tts: KokoroTTS,
    *,
    speed: float = 1.0,
    seed: int = 0,
    pauses: Pauses = Pauses(),
    progress: Callable[[Stage, int, int], None] | None = None,
) -> Speech:
    """Speak `lines` in order with `voices[speaker]` and lay them out with `pauses`.

    `progress(Stage.TTS, done, total)` is called after each line; it may raise to stop the stage (cancellation).
    Raises SpeechError for an empty dialogue, a speaker without a voice, a Chinese line with an English voice,
    or a line with nothing to pronounce.
    """
    if not lines:
        raise SpeechError("The dialogue is empty.", "run_speech got no lines")
    for line in lines:  # every refusal before the first synthesis
        if line.speaker not in voices:
            raise SpeechError("A speaker has no voice.", f"no voice for speaker {line.speaker}")
        pipeline_lang_code(line.language, voices[line.speaker])

    clips: list[np.ndarray] = []  # 24 kHz, padded to the grid
    starts: list[int] = []  # grid units
    cursor, previous = 0, None
    for index, line in enumerate(lines):
        audio = tts.synthesize(line.text, voice=voices[line.speaker], language=line.language, speed=speed,
                               seed=line_seed(seed, index))  # fmt: skip
        clip = _pad_to_grid(audio)
        cursor += _grid_units(pauses.before(previous, line.speaker, clip.shape[0] / TTS_SAMPLE_RATE))
        starts.append(cursor)
        clips.append(clip)
        cursor += clip.shape[0] // (TTS_SAMPLE_RATE // GRID_HZ)
        previous = line.speaker
        if progress is not None:
            progress(Stage.TTS, index + 1, len(lines))
    total = cursor + _grid_units(pauses.tail_s)
    return _assemble(lines, clips, starts, total)


def _assemble(lines: Sequence[SpeechLine], clips: Sequence[np.ndarray], starts: Sequence[int], total: int) -> Speech:
    """Place each 24 kHz clip (and its 16 kHz resampling) at its grid offset on its speaker's track."""
    per_grid_24k, per_grid_16k = TTS_SAMPLE_RATE // GRID_HZ, SAMPLE_RATE // GRID_HZ
    tracks = {speaker: np.zeros(total * per_grid_16k, dtype=np.float32) for speaker in SPEAKERS}
    soundtrack = np.zeros(total * per_grid_24k, dtype=np.float32)
    timings = []
    for index, (line, clip, start) in enumerate(zip(lines, clips, starts, strict=True)):
        units = clip.shape[0] // per_grid_24k
        soundtrack[start * per_grid_24k : (start + units) * per_grid_24k] = clip
        tracks[line.speaker][start * per_grid_16k : (start + units) * per_grid_16k] = resample(
            clip, TTS_SAMPLE_RATE, SAMPLE_RATE
        )
        timings.append(LineTiming(index, line.speaker, line.text, start / GRID_HZ, (start + units) / GRID_HZ))
    mixed = tracks["A"] + tracks["B"]
    return Speech(
        sample_rate=SAMPLE_RATE,
        tracks=MappingProxyType({speaker: _read_only(track) for speaker, track in tracks.items()}),
        mixed=_read_only(mixed),
        soundtrack=_read_only(soundtrack),
        soundtrack_rate=TTS_SAMPLE_RATE,
        lines=tuple(timings),
    )
