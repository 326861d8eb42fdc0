"""User-facing input errors of bot/core, with their texts in English and Simplified Chinese.

Each error class owns its message templates (`{"en": ..., "zh": ...}`), so a wording change touches
one place and every front end (Discord, Telegram, `duet queue submit`) shows the same words in the
user's locale. `admin_detail` is for logs only; front ends show `message(locale)` and nothing else.
These are refusals of what a user typed or uploaded — the storage layer's `DuetError` tree covers
the queue and is deliberately separate (bot/core must stay importable without a database).
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Literal

Locale = Literal["en", "zh"]
LOCALES: tuple[Locale, ...] = ("en", "zh")

# Every subclass with its own key lands here, so tests and a `/help` page can list every message.
MESSAGE_CATALOG: dict[str, Mapping[Locale, str]] = {}


def normalize_locale(locale: str | None) -> Locale:
    """Map a platform locale (Discord `zh-CN`, Telegram `zh-hans`, `zh_TW`, None) to a catalog locale."""
    if locale and locale.strip().lower().replace("_", "-").split("-")[0] == "zh":
        return "zh"
    return "en"


def _quoted_list(values: Iterable[object], locale: Locale) -> str:
    quoted = [f"“{value}”" for value in values]
    if locale == "zh":
        return "、".join(quoted)
    if len(quoted) <= 2:
        return " and ".join(quoted)
    return ", ".join(quoted[:-1]) + " and " + quoted[-1]


def _render_param(value: object, locale: Locale) -> str:
    if isinstance(value, (list, tuple)):
        return _quoted_list(value, locale)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class InputError(Exception):
    """Something the user supplied cannot be used; `message(locale)` says what and how to fix it.

    Subclasses set `key` and `templates`; `params` fill the templates' `{placeholders}`. A list or
    tuple parameter is shown as a quoted, locale-joined list (“Alice”, “Bob” and “Carol”).
    """

    key: ClassVar[str] = "input.invalid"
    templates: ClassVar[Mapping[Locale, str]] = {
        "en": "This input cannot be used.",
        "zh": "无法使用此输入。",
    }

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "key" in cls.__dict__:
            if cls.key in MESSAGE_CATALOG:
                raise TypeError(f"message key {cls.key!r} is already used")
            MESSAGE_CATALOG[cls.key] = cls.templates

    def __init__(self, *, admin_detail: str | None = None, **params: object) -> None:
        self.params: dict[str, object] = params
        self.admin_detail = admin_detail
        super().__init__(self.message("en"))

    def message(self, locale: str | None = "en") -> str:
        """The user-safe text in `locale` (anything that is not Chinese falls back to English)."""
        catalog_locale = normalize_locale(locale)
        rendered = {name: _render_param(value, catalog_locale) for name, value in self.params.items()}
        return self.templates[catalog_locale].format(**rendered)


MESSAGE_CATALOG[InputError.key] = InputError.templates


def template_fields(template: str) -> set[str]:
    """The `{placeholders}` a template uses (tests check both locales use the same ones)."""
    return {field for _, field, _, _ in string.Formatter().parse(template) if field}


class ScriptError(InputError):
    """The dialogue script cannot be turned into two speakers' lines."""


class VoiceError(InputError):
    """A voice choice is unknown or cannot speak the script's language."""


class NotTextError(ScriptError):
    key = "script.not_text"
    templates = {
        "en": "The script is not readable text (it looks like a binary file or an unknown encoding). "
        "Paste the dialogue as text, or send a UTF-8 .txt file.",
        "zh": "台词不是可读的文本（看起来是二进制文件或未知编码）。请直接粘贴对话文字，或发送 UTF-8 编码的 .txt 文件。",
    }


class EmptyScriptError(ScriptError):
    key = "script.empty"
    templates = {
        "en": "The script has no words to speak. Write at least one line for each person, "
        "for example “A: Hello!” on one line and “B: Hi there!” on the next.",
        "zh": "台词中没有可以朗读的文字。请为两个人各写至少一句，例如第一行写“A: 你好！”，第二行写“B: 你好呀！”。",
    }


class SingleSpeakerError(ScriptError):
    key = "script.single_speaker"
    templates = {
        "en": "Only {name} speaks in this script, but a Duet video needs two people talking. "
        "Add a line for the other person (start it with “{other}:”), or put each turn on its own "
        "line without labels and the lines will alternate A, B, A, …",
        "zh": "这段台词只有{name}在说话，而双人视频需要两个人对话。请为另一个人加一句（以“{other}:”开头），"
        "或者不加标签、每句话单独一行，系统会按 A、B、A……交替分配。",
    }


class TooManySpeakersError(ScriptError):
    key = "script.too_many_speakers"
    templates = {
        "en": "The script has {count} speakers: {names}. A Duet video shows exactly two people, "
        "so keep two speakers (for example only “A:” and “B:”). If {extra} is not meant to be a "
        "speaker, reword line {line} so that it does not start with a name and a colon.",
        "zh": "台词中有 {count} 个说话人：{names}。双人视频只能有两个人，请只保留两个说话人"
        "（例如只用“A:”和“B:”）。如果{extra}不是说话人，请修改第 {line} 行，不要以“名字+冒号”开头。",
    }


class UnlabeledLineError(ScriptError):
    key = "script.unlabeled_line"
    templates = {
        "en": "Line {line} (“{excerpt}”) comes before the first speaker label, so nobody would say it. "
        "Start it with a speaker such as “A:” or remove it.",
        "zh": "第 {line} 行（“{excerpt}”）出现在第一个说话人标签之前，无法确定由谁来说。"
        "请在行首加上说话人（例如“A:”），或删除这一行。",
    }


class ScriptTooLongError(ScriptError):
    key = "script.too_long"
    templates = {
        "en": "The script is {length} characters long; the limit is {limit}. "
        "Shorten it, or split the dialogue into several videos.",
        "zh": "台词共 {length} 个字符，上限为 {limit} 个。请删减内容，或把对话拆分成几个视频。",
    }


class LineTooLongError(ScriptError):
    key = "script.line_too_long"
    templates = {
        "en": "Line {line} (speaker {speaker}, “{excerpt}”) is {length} characters long; the limit "
        "is {limit} per line. Split it into shorter lines for the same speaker.",
        "zh": "第 {line} 行（说话人 {speaker}，“{excerpt}”）共 {length} 个字符，每行上限为 {limit} 个。"
        "请把它拆成同一说话人的几行短句。",
    }


class TooManyLinesError(ScriptError):
    key = "script.too_many_lines"
    templates = {
        "en": "The script has {count} lines of dialogue; the limit is {limit}. "
        "Merge short lines of the same speaker or split the dialogue into several videos.",
        "zh": "台词共有 {count} 句对话，上限为 {limit} 句。请合并同一说话人的短句，或把对话拆分成几个视频。",
    }


class SpeechTooLongError(ScriptError):
    key = "script.speech_too_long"
    templates = {
        "en": "Spoken aloud, this dialogue would take about {seconds} s; the limit is {limit} s. "
        "Cut about {excess} s of text (roughly {words} English words or {chars} Chinese characters).",
        "zh": "这段对话朗读出来约需 {seconds} 秒，上限为 {limit} 秒。"
        "请删减约 {excess} 秒的内容（大约 {chars} 个汉字或 {words} 个英文单词）。",
    }


class UnknownVoiceError(VoiceError):
    key = "voice.unknown"
    templates = {
        "en": "There is no voice “{voice}”. Try {suggestions}, or list all voices with /voices.",
        "zh": "没有名为“{voice}”的声音。可以试试{suggestions}，或用 /voices 查看全部声音。",
    }


class VoiceLanguageError(VoiceError):
    key = "voice.cannot_speak_chinese"
    templates = {
        "en": "Line {line} of speaker {speaker} is in Chinese, but the voice “{voice}” can only speak "
        "English. Choose a Mandarin voice for {speaker}, for example “{suggestion}”.",
        "zh": "说话人 {speaker} 的第 {line} 行是中文，但声音“{voice}”只能说英语。"
        "请为 {speaker} 选择普通话声音，例如“{suggestion}”。",
    }


class LanguageSettingError(VoiceError):
    key = "voice.language_setting"
    templates = {
        "en": "Line {line} is written in Chinese, but the language is set to English. "
        "Set the language to “zh” or “auto”, or rewrite that line in English.",
        "zh": "第 {line} 行是中文，但语言设置为英语。请把语言设为“zh”或“auto”，或把这一行改写成英文。",
    }
