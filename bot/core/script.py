"""Dialogue script parser: what a user typed → two speakers' ordered lines, or an error saying how to fix it.

Reads the original service's four formats and what people paste from chats and documents:
tags `(s1) … (s2) …` (several on one line too; `[s1]`, `【s1】`, `s1:`), numbered roles `角色1:`,
`Speaker 2:`, `人物1：`, letters `A:` / `B:` / `甲：` / `乙：`, named speakers `Alice:` / `小明：` (the first
name seen is A), and free format (one turn per line, alternating A, B, A, … starting with A).
Markdown bullets, numbering, `>` quotes, emphasis, headings and wrapping quotation marks are markup,
not speech. Brackets that are not tags — `(laughs)`, `（笑）`, `[sighs]` — are stage directions: kept in
`DialogueLine.directions`, never spoken.

Decisions (each one visible to users in the preview card):
- A label pins a speaker: s1 / 角色1 / Speaker 1 / A / 甲 are A, s2 / … / B / 乙 are B. Names and
  other labels take the free places in order of first appearance; a third identity is an error.
- A name only counts as a speaker where the script is clearly written that way: labelled lines are
  at least half of the lines (and two or more), or — when pinned labels already give both A and B —
  the name starts two or more lines. So "Note: it works", "at 10:30", "他说：好", URLs and times in
  ordinary prose stay text. An ASCII colon must be followed by a space or CJK text (after an
  explicit label such as `A:` also a letter), so `http://`, `10:30` and `C:\\` never make a label.
- An untagged line in a labelled script continues the current speaker's turn (joined with a space,
  or directly between CJK text). Separately labelled consecutive lines of one speaker stay separate
  turns: the user split them on purpose, and the engine inserts the same short pause as between
  speakers. Unlabelled text before the first label is refused, never guessed.
- Control, zero-width and bidi-override characters are stripped (and counted); text that is mostly
  control characters is refused as not text.
- Speech length is estimated, not measured: `voices.SpeechRates` documents the rates.
"""

from __future__ import annotations

import codecs
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict

from bot.core.errors import (
    EmptyScriptError,
    LineTooLongError,
    NotTextError,
    ScriptTooLongError,
    SingleSpeakerError,
    SpeechTooLongError,
    TooManyLinesError,
    TooManySpeakersError,
    UnlabeledLineError,
)
from bot.core.voices import SpeechRates
from storage.contract import Speaker

SPEAKERS: tuple[Speaker, Speaker] = ("A", "B")


@dataclass(frozen=True)
class ScriptLimits:
    """What one video may contain; the bot config overrides these per deployment."""

    max_script_chars: int = 2000
    max_line_chars: int = 300
    max_lines: int = 200
    max_speech_s: float = 60.0
    rates: SpeechRates = field(default_factory=SpeechRates)


class ScriptFormat(StrEnum):
    TAGS = "tags"  # (s1) / [s1] / s1:
    ROLES = "roles"  # 角色1: / Speaker 1: / 人物1：
    LETTERS = "letters"  # A: / B: / 甲： / 乙：
    NAMES = "names"  # Alice: / 小明：
    MIXED = "mixed"  # more than one of the above
    FREE = "free"  # no labels: lines alternate A, B, A, …


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DialogueLine(_Frozen):
    speaker: Speaker
    text: str  # what is spoken: labels, markup and stage directions removed
    directions: tuple[str, ...] = ()  # stage directions of this turn, in order, e.g. ("laughs",)
    line_no: int  # 1-based line of the script where the turn starts (for messages)


class Dialogue(_Frozen):
    lines: tuple[DialogueLine, ...]
    format: ScriptFormat
    names: dict[Speaker, str] = {}  # each speaker's label as first written: {"A": "Alice", "B": "Bob"}
    notes: tuple[str, ...] = ()  # non-spoken text outside turns: headings, scene lines, silent turns
    removed_characters: int = 0  # control, zero-width and bidi characters stripped from the input

    def to_json(self) -> list[dict[str, str]]:
        """The shape `duet script parse --json` prints and the job spec stores."""
        return [{"speaker": line.speaker, "text": line.text} for line in self.lines]

    def estimated_speech_s(self, rates: SpeechRates | None = None, speed: float = 1.0) -> float:
        return (rates or SpeechRates()).seconds([line.text for line in self.lines], speed)


# --------------------------------------------------------------------------------------------- input text

_NEWLINES = re.compile(r"\r\n|[\r\u2028\u2029\x85\x0b\x0c]")
_KEPT_CONTROLS = frozenset("\n\t")


def clean_script_text(text: str) -> tuple[str, int]:
    """Normalise line breaks, strip control/format/surrogate characters; returns (text, removed count).

    Raises NotTextError when control characters are more than 1 % of the text (a binary upload or a
    wrongly decoded file): stripping them would leave garbage that looks like a script.
    """
    text = _NEWLINES.sub("\n", text)
    kept: list[str] = []
    controls = removed = 0
    for char in text:
        category = unicodedata.category(char)
        if char in _KEPT_CONTROLS:
            kept.append(" " if char == "\t" else char)
        elif category in ("Cc", "Cf", "Cs"):
            removed += 1
            controls += category == "Cc"
        else:
            kept.append(char)
    if controls > max(2, len(text) // 100):
        raise NotTextError(admin_detail=f"{controls} control characters in {len(text)}")
    return "".join(kept), removed


_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def decode_script_bytes(data: bytes, limits: ScriptLimits | None = None) -> str:
    """Decode an uploaded script file: BOM if present, else UTF-8, else GB18030 (Chinese Windows).

    Files larger than any script within the limits could be (4 bytes per character) are refused
    before decoding.
    """
    limits = limits or ScriptLimits()
    if len(data) > 4 * limits.max_script_chars + 4:
        raise ScriptTooLongError(length=len(data), limit=limits.max_script_chars, admin_detail="bytes")
    encodings = [encoding for bom, encoding in _BOMS if data.startswith(bom)][:1] or ["utf-8", "gb18030"]
    for encoding in encodings:
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise NotTextError(admin_detail=f"undecodable as {encodings}")


# --------------------------------------------------------------------------------------------- labels

_Family = Literal["tags", "roles", "letters", "names", "note"]


@dataclass(frozen=True)
class _Label:
    key: str  # identity: "slot:A", "num:3", "letter:C", "name:alice"
    slot: Speaker | None  # pinned speaker, or None for names and third-speaker labels
    family: _Family
    display: str  # as written (normalised), for messages and Dialogue.names
    is_strong: bool  # an explicit speaker label (not a guessed name)


_BRACKET_TAG = re.compile(r"[(\[（【]\s*[sSｓＳ]\s*([0-9０-９]{1,3})\s*[)\]）】]")
_TAG = re.compile(r"[sS]\s*([0-9]{1,3})")
_ROLE = re.compile(
    r"(speaker|person|character|role|角色|人物|说话人|說話人|讲话人|講話人|发言人|發言人)\s*"
    r"([0-9]{1,3}|[一二三四五六七八九十]|[a-zA-Z甲乙丙丁])",
    re.IGNORECASE,
)
_LETTER = re.compile(r"[A-Z甲乙丙丁戊]")
_CHINESE_NUMBERS = "一二三四五六七八九十"
_LETTER_SLOTS: dict[str, Speaker] = {"A": "A", "B": "B", "甲": "A", "乙": "B"}
_NUMBER_SLOTS: dict[int, Speaker] = {1: "A", 2: "B"}

# Line-start words followed by a colon that are not people. Scene-like ones make a non-spoken note.
_NOTE_LABELS = frozenset(
    "scene setting location place stage title 场景 場景 背景 地点 地點 标题 標題 时间地点 画面 畫面".split()
)
_NOT_NAMES = frozenset(
    """note notes nb ps p.s tip tips hint warning caution important update edit example examples
    e.g i.e fyi re subject summary conclusion reminder source link url todo time date step result
    results output input answer question q.e.d translation remember so well yes no ok okay then but
    and also first second third finally why what how because however therefore meanwhile later
    today tomorrow yesterday here there this that
    注意 注 备注 備註 提示 说明 說明 例如 比如 总结 總結 结论 結論 时间 時間 日期 原因 结果 結果 答案
    更新 警告 重要 翻译 翻譯 然后 然後 但是 所以 因为 因為 首先 其次 最后 最後 比方 问题 問題
    今天 明天 后天 後天 昨天 前天 早上 上午 中午 下午 晚上 现在 現在 后来 後來 目前 其实 其實 另外""".split()
)
_SPEECH_VERB_ENDINGS = ("说", "說", "道", "问", "問", "答", "讲", "講", "表示", "回答", "认为", "認為", "觉得", "覺得", "想")
_PRONOUN_STARTS = ("我", "你", "您", "他", "她", "它", "这", "這", "那", "大家")
_SAID = re.compile(r"([\u3400-\u9fff·]{1,8}?)(?:说|說|问|問|答|回答)")
_HAN_NAME = re.compile(r"[\u3400-\u9fff][\u3400-\u9fff·•]{0,7}")
_LATIN_NAME_WORD = re.compile(r"[^\W\d_][^\W\d_'’.\-]*[.]?|[^\W\d_]+(?:['’\-][^\W\d_]+)+")


def _looks_like_name(label: str) -> bool:
    """A short proper name at line start: 1–3 capitalised words, or 1–8 Han characters."""
    folded = label.casefold()
    if len(label) > 24 or folded in _NOT_NAMES:
        return False
    if _HAN_NAME.fullmatch(label):
        return not label.endswith(_SPEECH_VERB_ENDINGS) and not label.startswith(_PRONOUN_STARTS)
    words = label.split()
    return 1 <= len(words) <= 3 and all(
        _LATIN_NAME_WORD.fullmatch(word) and word[0].isupper() and word.casefold().strip(".") not in _NOT_NAMES
        for word in words
    )


def _classify(label: str) -> _Label | None:
    """What a text before a colon is, if it is a speaker label (or a note label) at all."""
    label = unicodedata.normalize("NFKC", label).strip(" *_`")
    if label in ("a", "b"):
        label = label.upper()  # typed on a phone: "a: hi"
    if said := _SAID.fullmatch(label):
        # "小明说：" / "甲问：" is the speaker 小明 / 甲 — unless what is left is a pronoun ("他说：").
        inner = _classify(said[1])
        return inner if inner is not None and inner.family in ("letters", "names") else None
    if match := _TAG.fullmatch(label):
        return _numbered(int(match[1]), "tags", f"s{int(match[1])}")
    if match := _ROLE.fullmatch(label):
        value = match[2].upper()
        if value.isdigit() or value in _CHINESE_NUMBERS:
            number = int(value) if value.isdigit() else _CHINESE_NUMBERS.index(value) + 1
            return _numbered(number, "roles", label)
        return _lettered(value, "roles", label)
    if _LETTER.fullmatch(label):
        return _lettered(label, "letters", label)
    if label.casefold() in _NOTE_LABELS:
        return _Label(key="note", slot=None, family="note", display=label, is_strong=True)
    if _looks_like_name(label):
        return _Label(key=f"name:{label.casefold()}", slot=None, family="names", display=label, is_strong=False)
    return None


def _numbered(number: int, family: _Family, display: str) -> _Label:
    slot = _NUMBER_SLOTS.get(number)
    key = f"slot:{slot}" if slot else f"num:{number}"
    return _Label(key=key, slot=slot, family=family, display=display, is_strong=True)


def _lettered(letter: str, family: _Family, display: str) -> _Label:
    slot = _LETTER_SLOTS.get(letter)
    key = f"slot:{slot}" if slot else f"letter:{letter}"
    return _Label(key=key, slot=slot, family=family, display=display, is_strong=True)


# ---------------------------------------------------------------------------------------------- lines

_HEADING = re.compile(r"#{1,6}\s+(.*)")
_RULE = re.compile(r"(?:[-*_=~]\s*){3,}|```.*")
_QUOTE_MARKER = re.compile(r"(?:>\s?)+")
_BULLET = re.compile(r"(?:[-*+•·●▪◦‣]|\d{1,3}[.)]|\d{1,3}、|[(（]\d{1,3}[)）])\s+|\d{1,3}、")
_LEADING_LABEL = re.compile(r"(?P<label>[^:：\n]{1,40}?)\s*(?P<colon>[:：])")
_INLINE_LABEL = re.compile(
    r"(?P<label>[sSＳｓ]\s*[0-9０-９]{1,3}|" + _ROLE.pattern + r"|[A-Z甲乙丙丁])\s*(?P<colon>[:：])",
    re.IGNORECASE,
)
_SENTENCE_END = frozenset(".!?。！？…~～;；|｜/")
_DIRECTION = re.compile(r"[(（]([^()（）]*)[)）]|[\[【]([^\[\]【】]*)[\]】]")


def _colon_ends_label(text: str, colon_end: int, label: _Label) -> bool:
    """Whether a colon really ends a label (so `http://`, `10:30` and `C:\\` never make one).

    A full-width colon always does; an ASCII colon needs a space, the line's end or CJK text after it
    (Markdown emphasis skipped), or — for explicit labels such as `A:` — a letter or a quote.
    """
    position = colon_end
    while position < len(text) and text[position] in "*_":
        position += 1
    if text[colon_end - 1] == "：" or position == len(text):
        return True
    following = text[position]
    if following.isspace() or not following.isascii():
        return True
    return label.is_strong and (following.isalpha() or following in "\"'")


@dataclass
class _Piece:
    """Text of one line between labels; `label` None means it continues whatever came before."""

    line_no: int
    text: str
    label: _Label | None = None
    label_text: str = ""  # the label as written, put back if the label is not accepted
    label_directions: tuple[str, ...] = ()  # "Alice (whispering):" → ("whispering",)
    is_note: bool = False


def _strip_markup(line: str) -> str:
    """Drop a leading `>` quote marker and one bullet or list number."""
    if quote := _QUOTE_MARKER.match(line):
        line = line[quote.end() :].lstrip()
    if bullet := _BULLET.match(line):
        line = line[bullet.end() :]
    return line.strip()


def _leading_label(body: str, line_no: int) -> _Piece | None:
    match = _LEADING_LABEL.match(body)
    if not match:
        return None
    raw_label = match["label"]
    if _BRACKET_TAG.search(raw_label):
        return None  # "(s1) Note: …" is a tag followed by text, not a label "Note"
    directions = tuple(d.strip() for pair in _DIRECTION.findall(raw_label) for d in pair if d.strip())
    label = _classify(_DIRECTION.sub("", raw_label))
    if label is None or not _colon_ends_label(body, match.end(), label):
        return None
    if label.family == "note":
        return _Piece(line_no, body, is_note=True)  # "Scene: a café" stays whole, never spoken
    rest = body[match.end() :].lstrip(" *_")
    return _Piece(line_no, rest, label, body[: match.end()], directions)


def _inline_split(piece: _Piece) -> list[_Piece]:
    """Split a piece at `(s2)` anywhere, and at a label of its own family: `s2:` / `角色2:` after a
    space or sentence end, `B:` / `乙：` only after a sentence end (so "plan B: …" stays text)."""
    cuts: list[tuple[int, int, _Label]] = []
    for match in _BRACKET_TAG.finditer(piece.text):
        number = int(unicodedata.normalize("NFKC", match[1]))
        cuts.append((match.start(), match.end(), _numbered(number, "tags", f"s{number}")))
    if piece.label is not None and piece.label.is_strong:
        for match in _INLINE_LABEL.finditer(piece.text):
            label = _classify(match["label"])
            if label is None or label.family != piece.label.family:
                continue  # "A: I use s2: the new server" — another family inline is text
            if not _colon_ends_label(piece.text, match.end(), label):
                continue
            before = piece.text[: match.start()].rstrip()
            boundary = not before or before[-1] in _SENTENCE_END
            spaced = match.start() == 0 or piece.text[match.start() - 1].isspace()
            if boundary or (label.family != "letters" and spaced):
                cuts.append((match.start(), match.end(), label))
    kept: list[tuple[int, int, _Label]] = []
    for cut in sorted(cuts):
        if not kept or cut[0] >= kept[-1][1]:  # overlapping matches: the earlier one wins
            kept.append(cut)
    if not kept:
        return [piece]
    pieces = [_Piece(piece.line_no, piece.text[: kept[0][0]], piece.label, piece.label_text, piece.label_directions)]
    for index, (start, end, label) in enumerate(kept):
        stop = kept[index + 1][0] if index + 1 < len(kept) else len(piece.text)
        pieces.append(_Piece(piece.line_no, piece.text[end:stop].lstrip(" *_"), label, piece.text[start:end]))
    return pieces


def _split_lines(text: str) -> list[_Piece]:
    pieces: list[_Piece] = []
    for line_no, raw_line in enumerate(text.split("\n"), start=1):
        line = raw_line.strip()
        if not line or _RULE.fullmatch(line):
            continue
        if heading := _HEADING.fullmatch(line):
            pieces.append(_Piece(line_no, heading[1], is_note=True))
            continue
        body = _strip_markup(line)
        if not body:
            continue
        leading = _leading_label(body, line_no) or _Piece(line_no, body)
        pieces.extend(_inline_split(leading))
    return pieces


# ---------------------------------------------------------------------------------------------- turns


def _accepted_labels(pieces: Sequence[_Piece]) -> set[str]:
    """Which label keys count as speakers (see the module docstring for the name rule)."""
    speaking = [p for p in pieces if not p.is_note]
    strong_slots = {p.label.slot for p in speaking if p.label and p.label.is_strong}
    name_counts = Counter(p.label.key for p in speaking if p.label and not p.label.is_strong)
    content_lines = len({p.line_no for p in speaking})
    labelled_lines = len({p.line_no for p in speaking if p.label})
    accepted = {p.label.key for p in speaking if p.label and p.label.is_strong}
    if {"A", "B"} <= strong_slots:
        accepted |= {key for key, count in name_counts.items() if count >= 2}
    elif labelled_lines >= 2 and 2 * labelled_lines >= content_lines:
        accepted |= set(name_counts)
    return accepted


def _assign_speakers(pieces: Sequence[_Piece], accepted: set[str]) -> tuple[dict[str, Speaker], dict[Speaker, str]]:
    """Map accepted label keys to A/B: pinned labels first, others fill the free places in order."""
    first_seen: dict[str, _Piece] = {}
    for piece in pieces:
        if piece.label and piece.label.key in accepted and not piece.is_note:
            first_seen.setdefault(piece.label.key, piece)
    slots: dict[str, Speaker] = {key: p.label.slot for key, p in first_seen.items() if p.label and p.label.slot}
    free = [speaker for speaker in SPEAKERS if speaker not in slots.values()]
    extras: list[_Piece] = []
    for key, piece in first_seen.items():
        if key in slots:
            continue
        if free:
            slots[key] = free.pop(0)
        else:
            extras.append(piece)
    if extras:
        names = [p.label.display for p in first_seen.values() if p.label]
        raise TooManySpeakersError(
            count=len(names),
            names=names,
            extra=[p.label.display for p in extras if p.label],
            line=extras[0].line_no,
        )
    names_by_speaker = {slots[key]: p.label.display for key, p in first_seen.items() if p.label}
    return slots, dict(sorted(names_by_speaker.items()))


def _joined(before: str, after: str) -> str:
    if not before or not after:
        return before + after
    cjk_edge = not before[-1].isascii() and not after[0].isascii()
    return before + ("" if cjk_edge else " ") + after


_QUOTE_PAIRS = {'"': '"', "“": "”", "「": "」", "『": "』", "‘": "’", "'": "'", "«": "»", "„": "“"}
_SPACES = re.compile(r"\s+")


def _spoken_and_directions(text: str) -> tuple[str, list[str]]:
    """Remove stage directions (innermost first) and markup; return (spoken text, directions)."""
    directions: list[str] = []

    def take(match: re.Match[str]) -> str:
        content = (match[1] if match[1] is not None else match[2]).strip()
        if content:
            directions.append(content)
        return " "

    previous = None
    while previous != text:
        previous, text = text, _DIRECTION.sub(take, text)
    text = _SPACES.sub(" ", text.replace("**", "").replace("__", "").replace("*", "").replace("`", "")).strip()
    closing = _QUOTE_PAIRS.get(text[:1])
    inner = text[1:-1]
    if closing and len(text) >= 2 and text.endswith(closing) and closing not in inner and text[0] not in inner:
        text = inner.strip()  # quotation marks around the whole turn are not spoken
    if not any(char.isalnum() for char in text):
        text = ""
    return text, directions


@dataclass
class _Turn:
    speaker: Speaker
    line_no: int
    raw: str
    directions: list[str]


def _build_turns(
    pieces: Sequence[_Piece], slots: dict[str, Speaker], notes: list[str]
) -> list[_Turn]:
    is_labelled = bool(slots)
    turns: list[_Turn] = []
    for piece in pieces:
        if piece.is_note:
            notes.append(piece.text.strip())
            continue
        if piece.label and piece.label.key in slots:
            turns.append(_Turn(slots[piece.label.key], piece.line_no, piece.text, list(piece.label_directions)))
            continue
        text = _joined(piece.label_text, piece.text) if piece.label else piece.text
        spoken, _ = _spoken_and_directions(text)
        if turns and (is_labelled or not spoken):
            turns[-1].raw = _joined(turns[-1].raw, text)  # a continuation line, or a direction-only line
        elif is_labelled:
            if spoken:
                raise UnlabeledLineError(line=piece.line_no, excerpt=_excerpt(spoken))
            notes.append(text.strip())
        elif spoken:
            speaker = SPEAKERS[len(turns) % 2]
            turns.append(_Turn(speaker, piece.line_no, text, []))
        else:
            notes.append(text.strip())
    return turns


def _excerpt(text: str, length: int = 30) -> str:
    return text if len(text) <= length else text[: length - 1] + "…"


def _format_of(pieces: Sequence[_Piece], slots: dict[str, Speaker]) -> ScriptFormat:
    families = {p.label.family for p in pieces if p.label and p.label.key in slots}
    if not families:
        return ScriptFormat.FREE
    return ScriptFormat(families.pop()) if len(families) == 1 else ScriptFormat.MIXED


# ---------------------------------------------------------------------------------------------- public


def parse_script(text: str, limits: ScriptLimits | None = None, speech_speed: float = 1.0) -> Dialogue:
    """Parse a dialogue script; raises a ScriptError subclass whose message says how to fix the input.

    `speech_speed` is the job's TTS speed: a faster voice fits more words into the time limit.
    """
    limits = limits or ScriptLimits()
    if len(text) > 2 * limits.max_script_chars + 1000:  # bound the work before cleaning
        raise ScriptTooLongError(length=len(text), limit=limits.max_script_chars)
    cleaned, removed = clean_script_text(text)
    length = len(cleaned.strip())
    if length > limits.max_script_chars:
        raise ScriptTooLongError(length=length, limit=limits.max_script_chars)

    pieces = _split_lines(cleaned)
    accepted = _accepted_labels(pieces)
    slots, names = _assign_speakers(pieces, accepted)
    notes: list[str] = []
    lines: list[DialogueLine] = []
    for turn in _build_turns(pieces, slots, notes):
        spoken, directions = _spoken_and_directions(turn.raw)
        directions = turn.directions + directions
        if spoken:
            lines.append(
                DialogueLine(speaker=turn.speaker, text=spoken, directions=tuple(directions), line_no=turn.line_no)
            )
        elif directions:
            notes.append(f"{turn.speaker}: " + "; ".join(directions))
    dialogue = Dialogue(
        lines=tuple(lines),
        format=_format_of(pieces, slots),
        names=names,
        notes=tuple(note for note in notes if note),
        removed_characters=removed,
    )
    check_dialogue(dialogue, limits, speech_speed)
    return dialogue


def check_dialogue(dialogue: Dialogue, limits: ScriptLimits, speech_speed: float = 1.0) -> None:
    """The limits a parsed dialogue must meet, in the order a user should fix them."""
    if not dialogue.lines:
        raise EmptyScriptError()
    speakers = {line.speaker for line in dialogue.lines}
    if len(speakers) == 1:
        (speaker,) = speakers
        other = "B" if speaker == "A" else "A"
        raise SingleSpeakerError(name=dialogue.names.get(speaker, speaker), other=other)
    for line in dialogue.lines:
        if len(line.text) > limits.max_line_chars:
            raise LineTooLongError(
                line=line.line_no,
                speaker=line.speaker,
                excerpt=_excerpt(line.text, 20),
                length=len(line.text),
                limit=limits.max_line_chars,
            )
    if len(dialogue.lines) > limits.max_lines:
        raise TooManyLinesError(count=len(dialogue.lines), limit=limits.max_lines)
    seconds = dialogue.estimated_speech_s(limits.rates, speech_speed)
    if seconds > limits.max_speech_s:
        excess = math.ceil(seconds - limits.max_speech_s)
        raise SpeechTooLongError(
            seconds=math.ceil(seconds),
            limit=limits.max_speech_s,
            excess=excess,
            words=math.ceil(excess * limits.rates.english_words_per_s),
            chars=math.ceil(excess * limits.rates.chinese_chars_per_s),
        )
