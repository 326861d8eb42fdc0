"""The voice catalog, language detection, defaults, and the Chinese-text/English-voice refusal."""

from __future__ import annotations

import re

import pytest

from bot.core.errors import LanguageSettingError, UnknownVoiceError, VoiceLanguageError
from bot.core.script import parse_script
from bot.core.voices import (
    LEGACY_ALIASES,
    VOICES,
    Gender,
    default_voice,
    find_voices,
    get_voice,
    list_voices,
    plan_voices,
    suggest_voice,
)
from storage.language import count_speech_units, detect_language

MANDARIN = {"zf_xiaobei", "zf_xiaoni", "zf_xiaoxiao", "zf_xiaoyi", "zm_yunjian", "zm_yunxi", "zm_yunxia", "zm_yunyang"}


def test_catalog_has_the_original_services_voices_and_kokoros_mandarin_voices() -> None:
    assert {"af_heart", "am_adam", "af_bella"} <= set(VOICES)
    assert {voice.id for voice in list_voices("zh")} == MANDARIN
    assert len(list_voices("en")) == 28  # Kokoro-82M v1.0: 20 American + 8 British English voices


def test_every_voice_is_consistent_with_kokoros_naming() -> None:
    for voice_id, voice in VOICES.items():
        assert re.fullmatch(r"[abz][fm]_[a-z]+", voice_id)  # also what storage's JobSpec accepts
        assert voice.lang_code == voice_id[0]
        assert voice.gender == (Gender.FEMALE if voice_id[1] == "f" else Gender.MALE)
        assert voice.language == ("zh" if voice_id[0] == "z" else "en")
        assert voice.pack_filename == f"{voice_id}.pt"


def test_labels_in_both_languages() -> None:
    assert get_voice("af_heart").label("en") == "Heart (US English, gentle female)"
    assert get_voice("af_heart").label("zh-CN") == "Heart（美式英语·温柔女声）"
    assert get_voice("zm_yunxi").label("en") == "云希 (Mandarin, male)"
    assert get_voice("zm_yunxi").label("zh") == "云希（普通话·男声）"
    assert get_voice("bf_emma").label("en") == "Emma (British English, female)"
    assert len({voice.label("en") for voice in VOICES.values()}) == len(VOICES)


def test_defaults_are_a_woman_for_a_and_a_man_for_b_in_each_language() -> None:
    assert default_voice("A", "en").id == "af_heart" and default_voice("B", "en").id == "am_adam"
    assert default_voice("A", "zh").id == "zf_xiaoxiao" and default_voice("B", "zh").id == "zm_yunxi"
    for language in ("en", "zh"):
        assert default_voice("A", language).gender == Gender.FEMALE
        assert default_voice("B", language).gender == Gender.MALE
        assert default_voice("A", language).language == language


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("af_heart", "af_heart"),
        ("  AF_Bella ", "af_bella"),
        ("weights/Kokoro-82M/voices/am_adam.pt", "am_adam"),
        ("C:\\weights\\voices\\zf_xiaoyi.pt", "zf_xiaoyi"),
        ("am_freeman", "am_michael"),
        ("weights/Kokoro-82M/voices/am_freeman.pt", "am_michael"),
        ("女性温柔", "af_heart"),
        ("男性成熟", "am_adam"),
        ("女性活泼", "af_bella"),
        ("男性年轻", "am_michael"),
        ("Heart", "af_heart"),
        ("晓晓", "zf_xiaoxiao"),
        ("george", "bm_george"),
    ],
)
def test_voice_lookup_accepts_ids_paths_and_the_original_services_names(name: str, expected: str) -> None:
    assert get_voice(name).id == expected


def test_every_legacy_alias_points_at_a_catalog_voice() -> None:
    assert set(LEGACY_ALIASES.values()) <= set(VOICES)


def test_unknown_voice_suggests_the_closest_ids() -> None:
    with pytest.raises(UnknownVoiceError) as caught:
        get_voice("af_hart")
    assert caught.value.params["suggestions"][0] == "af_heart"
    assert caught.value.message("en").startswith("There is no voice “af_hart”. Try “af_heart”")
    assert caught.value.message("zh").startswith("没有名为“af_hart”的声音。可以试试“af_heart”")


def test_unknown_voice_without_close_match_suggests_defaults() -> None:
    with pytest.raises(UnknownVoiceError) as caught:
        get_voice("robot")
    assert caught.value.params["suggestions"] == ["af_heart", "zf_xiaoxiao"]


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("Hello there, how are you?", "en"),
        ("你好，今天天气真不错！", "zh"),
        ("我用iPhone拍的", "zh"),
        ("We ate at 北京饭店 tonight", "zh"),
        ("The 龍 symbol is very old indeed", "en"),
        ("OK", "en"),
        ("2024年", "zh"),
        ("こんにちは", "en"),  # kana is not Mandarin; no Han characters at all
        ("", "en"),
    ],
)
def test_language_detection_by_han_share(text: str, language: str) -> None:
    assert detect_language(text) == language


def test_speech_units_count_han_characters_and_words() -> None:
    units = count_speech_units("我用iPhone 15拍的, isn't it great?")
    assert (units.han_chars, units.words) == (4, 5)  # iPhone, 15, isn't, it, great


def test_plan_uses_defaults_by_each_speakers_language() -> None:
    dialogue = parse_script("A: 你好！\nB: Hello!\nA: Nice to meet you.")
    plan = plan_voices(dialogue)
    assert plan.voices["A"].id == "zf_xiaoxiao"  # one Chinese line is enough for a Mandarin voice
    assert plan.voices["B"].id == "am_adam"
    assert plan.line_languages == ("zh", "en", "en")
    assert plan.lang_code("A") == "z" and plan.lang_code("B") == "a"


def test_chosen_english_voice_with_chinese_text_is_refused_with_a_matching_suggestion() -> None:
    dialogue = parse_script("A: Hello!\nB: 你好！\nA: Bye.\nB: 再见。")
    with pytest.raises(VoiceLanguageError) as caught:
        plan_voices(dialogue, voice_a="af_bella", voice_b="am_adam")
    assert caught.value.params == {"speaker": "B", "line": 2, "voice": "am_adam", "suggestion": "zm_yunxi"}
    assert caught.value.message("en") == (
        "Line 2 of speaker B is in Chinese, but the voice “am_adam” can only speak English. "
        "Choose a Mandarin voice for B, for example “zm_yunxi”."
    )
    assert caught.value.message("zh") == (
        "说话人 B 的第 2 行是中文，但声音“am_adam”只能说英语。请为 B 选择普通话声音，例如“zm_yunxi”。"
    )


def test_female_english_voice_gets_a_female_mandarin_suggestion() -> None:
    dialogue = parse_script("A: 早上好\nB: Morning")
    with pytest.raises(VoiceLanguageError) as caught:
        plan_voices(dialogue, voice_a="bf_emma")
    assert caught.value.params["suggestion"] == suggest_voice("zh", Gender.FEMALE).id == "zf_xiaoxiao"


def test_mandarin_voice_may_read_english_lines() -> None:
    dialogue = parse_script("A: Hello!\nB: Hi!")
    plan = plan_voices(dialogue, voice_a="zf_xiaoyi", voice_b="zm_yunjian")
    assert plan.voices["A"].id == "zf_xiaoyi" and plan.lang_code("A") == "z"


def test_forced_chinese_makes_english_voices_invalid_for_every_line() -> None:
    dialogue = parse_script("A: Hello!\nB: Hi!")
    with pytest.raises(VoiceLanguageError):
        plan_voices(dialogue, voice_a="af_heart", language="zh")
    plan = plan_voices(dialogue, language="zh")
    assert plan.voices["A"].id == "zf_xiaoxiao" and plan.voices["B"].id == "zm_yunxi"


def test_forced_english_refuses_chinese_lines() -> None:
    dialogue = parse_script("A: Hello!\nB: 你好！")
    with pytest.raises(LanguageSettingError) as caught:
        plan_voices(dialogue, language="en")
    assert caught.value.params == {"line": 2}
    assert "“zh”" in caught.value.message("en") and "第 2 行是中文" in caught.value.message("zh")


def test_unknown_chosen_voice_is_refused_in_the_plan() -> None:
    with pytest.raises(UnknownVoiceError):
        plan_voices(parse_script("A: hi\nB: yo"), voice_b="am_nobody")


def test_blank_choice_means_default() -> None:
    plan = plan_voices(parse_script("A: hi\nB: yo"), voice_a="  ", voice_b=None)
    assert plan.voices == {"A": VOICES["af_heart"], "B": VOICES["am_adam"]}


@pytest.mark.parametrize(
    ("query", "locale", "expected"),
    [
        ("heart", "en", ["af_heart"]),
        ("普通话", "zh", sorted(MANDARIN)),
        ("mandarin", "zh", sorted(MANDARIN)),  # English words work in a Chinese client too
        ("温柔", "zh", ["af_heart"]),
        ("british english, male", "en", ["bm_daniel", "bm_fable", "bm_george", "bm_lewis"]),
        ("zzz", "en", []),
    ],
)
def test_find_voices_by_id_or_label(query: str, locale: str, expected: list[str]) -> None:
    assert sorted(voice.id for voice in find_voices(query, locale)) == expected


def test_find_voices_respects_the_platform_choice_limit() -> None:
    assert len(find_voices("", limit=25)) == 25
    assert find_voices("")[0].id == "af_heart"
