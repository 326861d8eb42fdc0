"""The Kokoro-82M voice catalog, per-line language detection, speech-length rates, and the voice ↔
language check.

Owns which voice ids a user may pick, how they are labelled in English and Chinese, the defaults
(speaker A female, speaker B male, per language), and the rule that a Chinese line is never handed
to an English voice: Kokoro's English G2P (misaki `en`) cannot pronounce Han characters and would
silently drop them, so a mismatch is refused with a suggested Mandarin voice. The opposite direction
is allowed: Kokoro's Mandarin pipeline reads embedded English words through its English fallback.
Pure Python: the engine loads `<weights>/Kokoro-82M/voices/<id>.pt`; this module never touches files.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Literal

from bot.core.errors import LanguageSettingError, UnknownVoiceError, VoiceLanguageError, normalize_locale
from storage.contract import Language as LanguageChoice
from storage.contract import Speaker
from storage.language import Language, count_speech_units, detect_language

if TYPE_CHECKING:
    from bot.core.script import Dialogue

LangCode = Literal["a", "b", "z"]  # Kokoro KPipeline lang_code: American English, British English, Mandarin

class Gender(StrEnum):
    FEMALE = "female"
    MALE = "male"


@dataclass(frozen=True)
class SpeechRates:
    """How fast Kokoro speaks at speed 1.0, for estimates before any audio exists.

    Mandarin news/dialogue runs at about 4–5 syllables (= Han characters) per second; conversational
    English at about 150–170 words per minute, 2.5–3 words per second. The midpoints are used, plus
    the pause the engine puts between turns. Numbers count as one word, so long digit strings read
    aloud in Chinese are underestimated; the estimate is a guard, the engine reports the real length.
    """

    chinese_chars_per_s: float = 4.5
    english_words_per_s: float = 2.7
    pause_between_lines_s: float = 0.3

    def seconds(self, texts: Sequence[str], speed: float = 1.0) -> float:
        """Estimated length of the lines spoken in turn; `speed` is Kokoro's speed factor (0.5–2)."""
        total = 0.0
        for text in texts:
            units = count_speech_units(text)
            total += units.han_chars / self.chinese_chars_per_s + units.words / self.english_words_per_s
        return total / speed + self.pause_between_lines_s * max(len(texts) - 1, 0)


_ACCENT_LABELS: Mapping[LangCode, tuple[str, str]] = {
    "a": ("US English", "美式英语"),
    "b": ("British English", "英式英语"),
    "z": ("Mandarin", "普通话"),
}
_GENDER_LABELS: Mapping[Gender, tuple[str, str]] = {
    Gender.FEMALE: ("female", "女声"),
    Gender.MALE: ("male", "男声"),
}


@dataclass(frozen=True)
class Voice:
    """One Kokoro voice pack. `grade` is the target-quality grade Kokoro's VOICES.md gives it."""

    id: str
    lang_code: LangCode
    gender: Gender
    grade: str
    display_name: str  # "Heart", "晓晓"
    trait_en: str = ""  # the original service's description, e.g. "gentle"
    trait_zh: str = ""

    @property
    def language(self) -> Language:
        return "zh" if self.lang_code == "z" else "en"

    @property
    def pack_filename(self) -> str:
        """File name inside `weights/Kokoro-82M/voices/` (the engine resolves the directory)."""
        return f"{self.id}.pt"

    def label(self, locale: str | None = "en") -> str:
        """A one-line label for pickers: name, trait, accent and gender in the user's language."""
        index = 1 if normalize_locale(locale) == "zh" else 0
        accent = _ACCENT_LABELS[self.lang_code][index]
        gender = _GENDER_LABELS[self.gender][index]
        trait = (self.trait_en, self.trait_zh)[index]
        if index:
            return f"{self.display_name}（{accent}·{trait}{gender}）"
        described = f"{trait} {gender}" if trait else gender
        return f"{self.display_name} ({accent}, {described})"


def _voice(voice_id: str, grade: str, display_name: str = "", trait: tuple[str, str] = ("", "")) -> Voice:
    lang_code: LangCode = voice_id[0]  # type: ignore[assignment]  # ids are "<lang><gender>_<name>"
    gender = Gender.FEMALE if voice_id[1] == "f" else Gender.MALE
    name = display_name or voice_id.split("_", 1)[1].capitalize()
    return Voice(voice_id, lang_code, gender, grade, name, trait[0], trait[1])


# Kokoro-82M v1.0 voices (hexgrad/Kokoro-82M VOICES.md) for the three languages Duet speaks. The
# original service offered the first four, with the Chinese traits shown; its fourth, "am_freeman",
# is not a Kokoro voice (see LEGACY_ALIASES). Order: the service's voices, Mandarin, other English.
VOICES: Mapping[str, Voice] = {
    voice.id: voice
    for voice in (
        _voice("af_heart", "A", trait=("gentle", "温柔")),
        _voice("am_adam", "F+", trait=("mature", "成熟")),
        _voice("af_bella", "A-", trait=("lively", "活泼")),
        _voice("am_michael", "C+", trait=("young", "年轻")),
        _voice("zf_xiaobei", "D", "晓北"),
        _voice("zf_xiaoni", "D", "晓妮"),
        _voice("zf_xiaoxiao", "D", "晓晓"),
        _voice("zf_xiaoyi", "D", "晓伊"),
        _voice("zm_yunjian", "D", "云健"),
        _voice("zm_yunxi", "D", "云希"),
        _voice("zm_yunxia", "D", "云夏"),
        _voice("zm_yunyang", "D", "云扬"),
        _voice("af_nicole", "B-"),
        _voice("af_aoede", "C+"),
        _voice("af_kore", "C+"),
        _voice("af_sarah", "C+"),
        _voice("af_alloy", "C"),
        _voice("af_nova", "C"),
        _voice("af_sky", "C-"),
        _voice("af_jessica", "D"),
        _voice("af_river", "D"),
        _voice("am_fenrir", "C+"),
        _voice("am_puck", "C+"),
        _voice("am_echo", "D"),
        _voice("am_eric", "D"),
        _voice("am_liam", "D"),
        _voice("am_onyx", "D"),
        _voice("am_santa", "D-"),
        _voice("bf_emma", "B-"),
        _voice("bf_isabella", "C"),
        _voice("bf_alice", "D"),
        _voice("bf_lily", "D"),
        _voice("bm_fable", "C"),
        _voice("bm_george", "C"),
        _voice("bm_lewis", "D+"),
        _voice("bm_daniel", "D"),
    )
}

# Names the original service accepted. Its "男性年轻" (young male) pointed at voices/am_freeman.pt,
# a file Kokoro-82M never shipped; we keep the choice working with the closest shipped voice, the
# best-graded American male voice (am_michael, C+).
LEGACY_ALIASES: Mapping[str, str] = {
    "am_freeman": "am_michael",
    "女性温柔": "af_heart",
    "男性成熟": "am_adam",
    "女性活泼": "af_bella",
    "男性年轻": "am_michael",
}

# Speaker A is a woman's voice and B a man's unless the user picks; English follows the original
# service (af_heart / am_adam), Mandarin uses the first female and male voices users usually know.
_DEFAULTS: Mapping[tuple[Language, Gender], str] = {
    ("en", Gender.FEMALE): "af_heart",
    ("en", Gender.MALE): "am_adam",
    ("zh", Gender.FEMALE): "zf_xiaoxiao",
    ("zh", Gender.MALE): "zm_yunxi",
}
SPEAKER_GENDERS: Mapping[Speaker, Gender] = {"A": Gender.FEMALE, "B": Gender.MALE}


def list_voices(language: Language | None = None, gender: Gender | None = None) -> list[Voice]:
    """Catalog voices, optionally of one language and/or gender, in catalog order."""
    return [
        voice
        for voice in VOICES.values()
        if (language is None or voice.language == language) and (gender is None or voice.gender == gender)
    ]


def find_voices(query: str, locale: str | None = "en", limit: int = 25) -> list[Voice]:
    """Voices whose id or label (in `locale`) contains `query`, case-insensitively, for pickers and
    autocomplete (Discord answers at most 25 choices). An empty query lists the catalog head."""
    needle = query.strip().casefold()
    matches = [
        voice
        for voice in VOICES.values()
        if needle in voice.id or needle in voice.label(locale).casefold() or needle in voice.label("en").casefold()
    ]
    return matches[:limit]


def suggest_voice(language: Language, gender: Gender) -> Voice:
    """The default voice of a language and gender (used for defaults and in error suggestions)."""
    return VOICES[_DEFAULTS[(language, gender)]]


def default_voice(speaker: Speaker, language: Language) -> Voice:
    return suggest_voice(language, SPEAKER_GENDERS[speaker])


def get_voice(name: str) -> Voice:
    """Resolve a voice id, its display name ("Heart", "晓晓"), a legacy name of the original service,
    or a `…/voices/<id>.pt` path.

    Raises UnknownVoiceError with the closest ids as suggestions.
    """
    key = name.strip().replace("\\", "/").rsplit("/", 1)[-1].removesuffix(".pt")
    key = LEGACY_ALIASES.get(key) or LEGACY_ALIASES.get(key.lower()) or key.lower()
    voice = VOICES.get(key) or next((v for v in VOICES.values() if v.display_name.casefold() == key), None)
    if voice is not None:
        return voice
    close = difflib.get_close_matches(key, list(VOICES), n=3, cutoff=0.6)
    suggestions = close or [_DEFAULTS[("en", Gender.FEMALE)], _DEFAULTS[("zh", Gender.FEMALE)]]
    raise UnknownVoiceError(voice=name.strip()[:40], suggestions=suggestions, admin_detail=f"voice {name!r}")


@dataclass(frozen=True)
class VoicePlan:
    """Which voice speaks for A and B, and each dialogue line's detected or chosen language."""

    voices: Mapping[Speaker, Voice]
    line_languages: tuple[Language, ...]

    def lang_code(self, speaker: Speaker) -> LangCode:
        """The Kokoro pipeline to use for a speaker: always the voice's own language."""
        return self.voices[speaker].lang_code


def line_languages(texts: Sequence[str], line_numbers: Sequence[int], language: LanguageChoice) -> list[Language]:
    """Language per line: detected (`auto`), or forced; forcing English onto a Chinese line is refused."""
    if language == "zh":
        return ["zh"] * len(texts)
    detected = [detect_language(text) for text in texts]
    if language == "en":
        for found, line_no in zip(detected, line_numbers, strict=True):
            if found == "zh":
                raise LanguageSettingError(line=line_no)
        return ["en"] * len(texts)
    return detected


def plan_voices(
    dialogue: Dialogue,
    voice_a: str | None = None,
    voice_b: str | None = None,
    language: LanguageChoice = "auto",
) -> VoicePlan:
    """Choose and check each speaker's voice for a parsed dialogue.

    A speaker without a chosen voice gets the default of their gender in the language most of their
    lines need (Chinese as soon as one line is Chinese, since a Mandarin voice can also read English
    words). A chosen English voice with a Chinese line raises VoiceLanguageError naming the line and
    a Mandarin voice of the same gender.
    """
    lines = dialogue.lines
    languages = line_languages([line.text for line in lines], [line.line_no for line in lines], language)
    chosen: dict[Speaker, Voice] = {}
    for speaker, requested in (("A", voice_a), ("B", voice_b)):
        own = [lang for line, lang in zip(lines, languages, strict=True) if line.speaker == speaker]
        if requested is None or not requested.strip():
            chosen[speaker] = default_voice(speaker, "zh" if "zh" in own else "en")
            continue
        voice = get_voice(requested)
        for line, lang in zip(lines, languages, strict=True):
            if line.speaker == speaker and lang == "zh" and voice.language == "en":
                raise VoiceLanguageError(
                    speaker=speaker,
                    line=line.line_no,
                    voice=voice.id,
                    suggestion=suggest_voice("zh", voice.gender).id,
                )
        chosen[speaker] = voice
    return VoicePlan(voices=chosen, line_languages=tuple(languages))
