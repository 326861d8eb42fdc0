"""Which language a line of dialogue is in — a rule of the job contract, shared by submission and the engine.

At submission the bots check each line against its speaker's voice; at render time the engine picks Kokoro's
G2P per line. Both must read a line the same way, so the rule lives here, below both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Language = Literal["en", "zh"]  # a detected language; the user's choice (contract.Language) may also be "auto"

# Han ideographs (CJK unified, extension A, compatibility, extensions B+). Kana and Hangul are not
# counted: Kokoro's Mandarin pipeline cannot read them either.
_HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")
# A Latin "word" as a listener hears it: letters with inner apostrophes/hyphens, or a number.
_WORD = re.compile(r"[^\W\d_]+(?:['’\-][^\W\d_]+)*|\d+(?:[.,:]\d+)*")
# A line is Chinese when Han characters are at least this share of its speech units (Han + words):
# "我用iPhone拍的" is Chinese, "We ate at 北京饭店 tonight" is too (an English voice would drop the
# four characters), "The 龍 symbol is old" is English with a stray character.
CHINESE_SHARE = 0.25


@dataclass(frozen=True)
class SpeechUnits:
    """What a listener hears: Han characters (one syllable each) and Latin words or numbers."""

    han_chars: int
    words: int

    @property
    def total(self) -> int:
        return self.han_chars + self.words


def count_speech_units(text: str) -> SpeechUnits:
    """Count Han characters and the words/numbers of the remaining (non-Han) text."""
    han = len(_HAN.findall(text))
    words = len(_WORD.findall(_HAN.sub(" ", text)))
    return SpeechUnits(han_chars=han, words=words)


def detect_language(text: str) -> Language:
    """`zh` when Han characters make up at least `CHINESE_SHARE` of the speech units, else `en`."""
    units = count_speech_units(text)
    if units.han_chars and units.han_chars >= CHINESE_SHARE * units.total:
        return "zh"
    return "en"
