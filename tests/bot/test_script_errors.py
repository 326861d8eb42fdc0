"""Every refusal of the parser says what is wrong and how to fix it, in English and in Chinese."""

from __future__ import annotations

import pytest

from bot.core.errors import (
    LOCALES,
    MESSAGE_CATALOG,
    EmptyScriptError,
    InputError,
    LineTooLongError,
    NotTextError,
    ScriptError,
    ScriptTooLongError,
    SingleSpeakerError,
    SpeechTooLongError,
    TooManyLinesError,
    TooManySpeakersError,
    UnlabeledLineError,
    normalize_locale,
    template_fields,
)
from bot.core.script import ScriptLimits, SpeechRates, clean_script_text, decode_script_bytes, parse_script


def _refusal(script: str, error: type[ScriptError], limits: ScriptLimits | None = None) -> ScriptError:
    with pytest.raises(error) as caught:
        parse_script(script, limits)
    return caught.value


def test_three_speakers_are_named_with_the_line_of_the_first_extra() -> None:
    error = _refusal("Alice: Hi.\nBob: Hello.\nCarol: Hey!\nAlice: Oh.", TooManySpeakersError)
    assert error.message("en") == (
        "The script has 3 speakers: “Alice”, “Bob” and “Carol”. A Duet video shows exactly two people, "
        "so keep two speakers (for example only “A:” and “B:”). If “Carol” is not meant to be a speaker, "
        "reword line 3 so that it does not start with a name and a colon."
    )
    assert error.message("zh") == (
        "台词中有 3 个说话人：“Alice”、“Bob”、“Carol”。双人视频只能有两个人，请只保留两个说话人"
        "（例如只用“A:”和“B:”）。如果“Carol”不是说话人，请修改第 3 行，不要以“名字+冒号”开头。"
    )


@pytest.mark.parametrize(
    ("script", "names", "extra"),
    [
        ("(s1) 你好 (s2) 你好 (s3) 大家好", ["s1", "s2", "s3"], ["s3"]),
        ("A: hi\nB: hey\nC: yo", ["A", "B", "C"], ["C"]),
        ("角色1：好\n角色2：好\n角色3：好\n角色4：好", ["角色1", "角色2", "角色3", "角色4"], ["角色3", "角色4"]),
        ("甲：好\n乙：好\n丙：好", ["甲", "乙", "丙"], ["丙"]),
        ("小明：你好\n小红：你好\n小刚：你们好", ["小明", "小红", "小刚"], ["小刚"]),
    ],
)
def test_three_or_more_speakers_in_every_format(script: str, names: list[str], extra: list[str]) -> None:
    error = _refusal(script, TooManySpeakersError)
    assert error.params["names"] == names
    assert error.params["extra"] == extra
    assert error.params["count"] == len(names)


@pytest.mark.parametrize("script", ["", "   \n\n  ", "(laughs)\n[sighs]", "A:\nB:", "# Title only", "...\n—"])
def test_no_spoken_text(script: str) -> None:
    error = _refusal(script, EmptyScriptError)
    assert "A: Hello!" in error.message("en")
    assert "A: 你好！" in error.message("zh")


@pytest.mark.parametrize(
    ("script", "name", "other"),
    [
        ("Just one line, nobody answers.", "A", "B"),
        ("A: Hello?\nA: Anyone there?", "A", "B"),
        ("B: Only me.", "B", "A"),
        ("(s1) 一个人\n(s1) 自言自语", "s1", "B"),
        ("Alice: Hi.\nAlice: Still me.", "Alice", "B"),
    ],
)
def test_one_speaker_only(script: str, name: str, other: str) -> None:
    error = _refusal(script, SingleSpeakerError)
    assert error.params == {"name": name, "other": other}
    assert f"Only {name} speaks" in error.message("en")
    assert f"以“{other}:”开头" in error.message("zh")


def test_text_before_the_first_label_is_refused_not_guessed() -> None:
    error = _refusal("Our little play\nA: Hi.\nB: Hello.", UnlabeledLineError)
    assert error.message("en").startswith("Line 1 (“Our little play”) comes before the first speaker label")
    assert error.message("zh").startswith("第 1 行（“Our little play”）出现在第一个说话人标签之前")


def test_script_over_the_character_limit() -> None:
    script = "A: " + "x" * 60 + "\nB: ok"
    error = _refusal(script, ScriptTooLongError, ScriptLimits(max_script_chars=50))
    assert error.params == {"length": len(script), "limit": 50}
    assert error.message("en") == (
        f"The script is {len(script)} characters long; the limit is 50. "
        "Shorten it, or split the dialogue into several videos."
    )
    assert error.message("zh") == f"台词共 {len(script)} 个字符，上限为 50 个。请删减内容，或把对话拆分成几个视频。"


def test_huge_input_is_refused_before_any_parsing() -> None:
    error = _refusal("A: hi\n" * 100_000, ScriptTooLongError)
    assert error.params["limit"] == 2000


def test_line_over_the_limit_names_line_speaker_and_start() -> None:
    long_text = "word " * 70
    error = _refusal(f"A: short\nB: {long_text}", LineTooLongError)
    assert error.params["line"] == 2 and error.params["speaker"] == "B" and error.params["limit"] == 300
    assert error.params["length"] == len(long_text.strip())
    assert "Split it into shorter lines for the same speaker." in error.message("en")
    assert "第 2 行（说话人 B，“word word word word…”）" in error.message("zh")


def test_too_many_lines() -> None:
    script = "\n".join(f"{'AB'[i % 2]}: {i}" for i in range(12))
    error = _refusal(script, TooManyLinesError, ScriptLimits(max_lines=10))
    assert error.params == {"count": 12, "limit": 10}


def test_speech_estimate_over_the_maximum_says_how_much_to_cut() -> None:
    # 30 English words ≈ 11.1 s + 36 Han characters = 8 s + one pause 0.3 s ≈ 19.4 s, limit 10 s.
    script = "A: " + " ".join(["hello"] * 30) + "\nB: " + "你" * 36
    error = _refusal(script, SpeechTooLongError, ScriptLimits(max_speech_s=10))
    assert error.params == {"seconds": 20, "limit": 10, "excess": 10, "words": 27, "chars": 45}
    assert error.message("en") == (
        "Spoken aloud, this dialogue would take about 20 s; the limit is 10 s. "
        "Cut about 10 s of text (roughly 27 English words or 45 Chinese characters)."
    )
    assert error.message("zh") == "这段对话朗读出来约需 20 秒，上限为 10 秒。请删减约 10 秒的内容（大约 45 个汉字或 27 个英文单词）。"


def test_default_limit_accepts_a_minute_of_speech_and_refuses_more() -> None:
    words_per_line = 20
    lines = [f"{'AB'[i % 2]}: " + " ".join(["word"] * words_per_line) for i in range(8)]  # 160 words ≈ 61.4 s
    assert parse_script("\n".join(lines[:7])).estimated_speech_s() < 60
    with pytest.raises(SpeechTooLongError):
        parse_script("\n".join(lines))


def test_a_faster_voice_fits_more_text_into_the_limit() -> None:
    script = "A: " + " ".join(["hello"] * 20) + "\nB: " + " ".join(["world"] * 20)  # 40 words ≈ 15.1 s
    with pytest.raises(SpeechTooLongError):
        parse_script(script, ScriptLimits(max_speech_s=10))
    assert parse_script(script, ScriptLimits(max_speech_s=10), speech_speed=2.0).estimated_speech_s(speed=2.0) < 10


def test_speech_rates_are_documented_numbers() -> None:
    rates = SpeechRates()
    assert 4 <= rates.chinese_chars_per_s <= 5
    assert 2.5 <= rates.english_words_per_s <= 3
    assert rates.seconds(["你好世界你好世界你好"]) == pytest.approx(10 / 4.5)
    assert rates.seconds(["one two three", "四五"]) == pytest.approx(3 / 2.7 + 2 / 4.5 + 0.3)


def test_binary_garbage_is_not_text() -> None:
    error = _refusal("A: hi\x00\x01\x02\x03\x04\x05 B: \x06\x07", NotTextError)
    assert ".txt" in error.message("en") and "UTF-8" in error.message("zh")


def test_a_few_stray_controls_are_only_stripped() -> None:
    text, removed = clean_script_text("A: hi\x00\u202d there\u2066\nB: ok\x7f")
    assert (text, removed) == ("A: hi there\nB: ok", 4)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("A: 你好\nB: hi".encode("utf-8"), "A: 你好\nB: hi"),
        (b"\xef\xbb\xbf" + "A: 你好".encode("utf-8"), "A: 你好"),
        ("A: 你好\nB: hi".encode("utf-16"), "A: 你好\nB: hi"),
        ("A: 你好\nB: 再见".encode("gb18030"), "A: 你好\nB: 再见"),
    ],
)
def test_script_files_are_decoded(data: bytes, expected: str) -> None:
    assert decode_script_bytes(data) == expected


def test_oversized_script_file_is_refused_before_decoding() -> None:
    with pytest.raises(ScriptTooLongError):
        decode_script_bytes(b"a" * 9000)


def test_utf16_without_bom_is_refused_as_not_text() -> None:
    data = "A: hello there\nB: hi again".encode("utf-16-le")
    with pytest.raises(NotTextError):
        parse_script(decode_script_bytes(data))


# ------------------------------------------------------------------------------------------- catalog


def test_every_message_exists_in_both_locales_with_the_same_placeholders() -> None:
    assert {
        "script.not_text", "script.empty", "script.single_speaker", "script.too_many_speakers",
        "script.unlabeled_line", "script.too_long", "script.line_too_long", "script.too_many_lines",
        "script.speech_too_long", "voice.unknown", "voice.cannot_speak_chinese", "voice.language_setting",
    } <= set(MESSAGE_CATALOG)
    for key, templates in MESSAGE_CATALOG.items():
        assert set(templates) == set(LOCALES), key
        assert template_fields(templates["en"]) == template_fields(templates["zh"]), key
        assert any("\u4e00" <= char <= "\u9fff" for char in templates["zh"]), key


def test_keys_are_unique_per_class() -> None:
    with pytest.raises(TypeError):

        class Duplicate(InputError):  # noqa: F841 - defining it is the test
            key = "script.empty"


@pytest.mark.parametrize(
    ("locale", "expected"),
    [
        ("zh-CN", "zh"), ("zh_TW", "zh"), ("zh-hans", "zh"), ("ZH", "zh"),
        ("en-US", "en"), ("de", "en"), (None, "en"), ("", "en"),
    ],
)
def test_platform_locales_map_to_catalog_locales(locale: str | None, expected: str) -> None:
    assert normalize_locale(locale) == expected


def test_errors_keep_admin_detail_apart_from_the_user_text() -> None:
    error = NotTextError(admin_detail="17 control characters in 40")
    assert "17" not in error.message("en") and "17" not in error.message("zh")
    assert error.admin_detail == "17 control characters in 40"
    assert str(error) == error.message("en")
