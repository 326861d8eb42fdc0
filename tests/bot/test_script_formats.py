"""Real-looking scripts in every supported format parse to the lines a person would expect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.core.script import Dialogue, ScriptFormat, parse_script

FIXTURES = Path(__file__).parent / "fixtures" / "scripts"
SCRIPTS = sorted(FIXTURES.glob("*.txt"))


def test_fixture_set_is_complete() -> None:
    assert len(SCRIPTS) >= 20
    assert all(path.with_suffix(".json").exists() for path in SCRIPTS)
    formats = {json.loads(path.with_suffix(".json").read_text("utf-8"))["format"] for path in SCRIPTS}
    assert formats == {member.value for member in ScriptFormat}


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda path: path.stem)
def test_fixture_parses_as_expected(path: Path) -> None:
    expected = json.loads(path.with_suffix(".json").read_text("utf-8"))
    dialogue = parse_script(path.read_text("utf-8"))

    assert dialogue.to_json() == [{"speaker": line["speaker"], "text": line["text"]} for line in expected["lines"]]
    expected_directions = [line.get("directions", []) for line in expected["lines"]]
    assert [list(line.directions) for line in dialogue.lines] == expected_directions
    assert dialogue.format == expected["format"]
    assert dialogue.names == expected["names"]
    assert list(dialogue.notes) == expected.get("notes", [])


def _parse(text: str) -> Dialogue:
    return parse_script(text)


def test_line_numbers_point_at_the_turns_first_line() -> None:
    dialogue = _parse("\n\nA: one\ncontinued\n\nB: two")
    assert [line.line_no for line in dialogue.lines] == [3, 6]


def test_consecutive_labelled_lines_of_one_speaker_stay_separate() -> None:
    dialogue = _parse("A: First thought.\nA: Second thought.\nB: Both noted.")
    assert dialogue.to_json() == [
        {"speaker": "A", "text": "First thought."},
        {"speaker": "A", "text": "Second thought."},
        {"speaker": "B", "text": "Both noted."},
    ]


@pytest.mark.parametrize(
    "line",
    [
        "The meeting is at 10:30 tomorrow.",
        "See https://example.com:8080/path for details.",
        "Files live in C:\\Users\\me now.",
        "Note: it works.",
        "Warning: hot coffee.",
        "So: what now?",
        "他说：明天见。",
        "我觉得：挺好的。",
        "Ratio 16:9 is fine.",
        "the plan: go home",
        "Step one: relax.",
    ],
)
def test_colons_in_ordinary_sentences_do_not_create_speakers(line: str) -> None:
    script = f"Hi there.\n{line}\nSounds good.\nSee you."
    dialogue = _parse(script)
    assert dialogue.format == ScriptFormat.FREE
    assert [entry["speaker"] for entry in dialogue.to_json()] == ["A", "B", "A", "B"]
    assert dialogue.lines[1].text == line


def test_a_single_capitalised_word_with_colon_in_free_text_stays_text() -> None:
    dialogue = _parse("Where did you go?\nParis: beautiful as ever.\nLucky you.\nI know.")
    assert dialogue.lines[1].text == "Paris: beautiful as ever."


def test_names_are_speakers_when_most_lines_carry_them() -> None:
    dialogue = _parse("Carol: Hi.\nDave: Hello.\nCarol: Bye.")
    assert dialogue.names == {"A": "Carol", "B": "Dave"}


def test_name_repeated_in_a_pinned_script_is_a_third_speaker() -> None:
    from bot.core.errors import TooManySpeakersError

    with pytest.raises(TooManySpeakersError) as caught:
        _parse("A: hi\nB: hello\nCarol: hey\nA: ok\nCarol: again")
    assert caught.value.params["extra"] == ["Carol"]


def test_single_name_line_in_a_pinned_script_is_a_continuation() -> None:
    dialogue = _parse("A: I always say one thing.\nRemember: breathe.\nB: Good advice.")
    assert dialogue.lines[0].text == "I always say one thing. Remember: breathe."


def test_windows_line_endings_tabs_and_unicode_separators() -> None:
    dialogue = _parse("A:\tHello\r\nB:\tHi\rA: One\u2028B: Two")
    assert dialogue.to_json() == [
        {"speaker": "A", "text": "Hello"},
        {"speaker": "B", "text": "Hi"},
        {"speaker": "A", "text": "One"},
        {"speaker": "B", "text": "Two"},
    ]


def test_ascii_colon_without_space_before_chinese_is_a_label() -> None:
    dialogue = _parse("A:你好\nB:Hello")
    assert dialogue.to_json() == [{"speaker": "A", "text": "你好"}, {"speaker": "B", "text": "Hello"}]


def test_nested_and_unbalanced_brackets() -> None:
    dialogue = _parse("A: Well (he pauses (briefly)) fine.\nB: Smile :) and (wink")
    assert dialogue.lines[0].text == "Well fine."
    assert dialogue.lines[0].directions == ("briefly", "he pauses")
    assert dialogue.lines[1].text == "Smile :) and (wink"


def test_quotes_inside_a_turn_are_kept() -> None:
    dialogue = _parse('A: "Hi," she said, "bye."\nB: \u201cOK\u201d')
    assert dialogue.lines[0].text == '"Hi," she said, "bye."'
    assert dialogue.lines[1].text == "OK"


def test_emphasis_and_code_markup_are_not_spoken() -> None:
    dialogue = _parse("**Hello** there, `friend`!\n```\nHi *you*.\n```")
    assert [line.text for line in dialogue.lines] == ["Hello there, friend!", "Hi you."]


def test_control_and_bidi_characters_are_removed_and_counted() -> None:
    dialogue = _parse("A: Hel\u200blo\u202e there\x00\nB: Hi\ufeff!")
    assert dialogue.lines[0].text == "Hello there"
    assert dialogue.lines[1].text == "Hi!"
    assert dialogue.removed_characters == 4


def test_inline_letter_needs_a_sentence_end_before_it() -> None:
    dialogue = _parse("A: We go with plan B: the safe one. B: Agreed.")
    assert dialogue.to_json() == [
        {"speaker": "A", "text": "We go with plan B: the safe one."},
        {"speaker": "B", "text": "Agreed."},
    ]


def test_third_numbered_tag_alone_takes_the_free_place() -> None:
    dialogue = _parse("(s1) Hi.\n(s3) Hello.")
    assert dialogue.names == {"A": "s1", "B": "s3"}
    assert [line.speaker for line in dialogue.lines] == ["A", "B"]


def test_to_json_is_exactly_speaker_and_text() -> None:
    dialogue = _parse("A: Hi (smiles)\nB: Yo")
    assert json.loads(json.dumps(dialogue.to_json())) == [
        {"speaker": "A", "text": "Hi"},
        {"speaker": "B", "text": "Yo"},
    ]


@pytest.mark.parametrize(
    "script",
    [
        "Speaker 1: Hi there. Speaker 2: Hello!",
        "s1: Hi there. s2: Hello!",
        "s1: Hi there s2: Hello!",
        "A: Hi there! / B: Hello!",
    ],
)
def test_several_colon_labels_on_one_line(script: str) -> None:
    assert [line.speaker for line in _parse(script).lines] == ["A", "B"]


def test_a_label_of_another_family_inside_a_line_is_text() -> None:
    dialogue = _parse("A: I moved it to s2: the new server.\nB: Thanks.")
    assert dialogue.lines[0].text == "I moved it to s2: the new server."


def test_chinese_time_words_with_colons_do_not_make_a_named_script() -> None:
    dialogue = _parse("今天天气很好。\n明天：可能下雨。\n后天：晴天。\n好的。")
    assert dialogue.format == ScriptFormat.FREE and len(dialogue.lines) == 4


def test_chat_log_pronoun_names_are_speakers() -> None:
    dialogue = _parse("Me: hi\nYou: hello\nMe: bye")
    assert dialogue.names == {"A": "Me", "B": "You"}
    assert [line.text for line in dialogue.lines] == ["hi", "hello", "bye"]


def test_lowercase_letters_typed_on_a_phone() -> None:
    dialogue = _parse("a: hi\nb: hey. a: what's up?")
    assert [(line.speaker, line.text) for line in dialogue.lines] == [("A", "hi"), ("B", "hey."), ("A", "what's up?")]


def test_chinese_said_labels_name_the_speaker() -> None:
    dialogue = _parse("小明说：你好！\n小红问：你是谁？\n小明：我是小明。\n小红答：哦。")
    assert dialogue.names == {"A": "小明", "B": "小红"}
    assert [line.speaker for line in dialogue.lines] == ["A", "B", "A", "B"]
    dialogue = _parse("甲说：来了？\n乙说：来了。")
    assert dialogue.format == ScriptFormat.LETTERS and [line.text for line in dialogue.lines] == ["来了？", "来了。"]


def test_pronoun_said_is_speech_not_a_speaker() -> None:
    dialogue = _parse("A: 我见到老王了。\n他说：明天见。\nB: 好的。")
    assert dialogue.lines[0].text == "我见到老王了。他说：明天见。"
