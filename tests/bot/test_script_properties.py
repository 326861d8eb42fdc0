"""Properties of the parser over generated scripts: it never crashes, and it never loses spoken text."""

from __future__ import annotations

import re
import unicodedata

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bot.core.errors import ScriptError
from bot.core.script import ScriptLimits, decode_script_bytes, parse_script

# A numbered role label, such as `角色1:` or `Speaker 2：` (at a line's start or inline). Its word is markup: when the
# same speaker was first written `(s1)` or `A:`, that is the name shown and the word appears nowhere in the result.
_ROLE_LABEL = re.compile(r"(speaker|person|character|role|角色|人物|说话人|說話人|讲话人|講話人|发言人|發言人)\s*\d+\s*[:：]", re.I)

PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Words that cannot look like labels or markup: no colons, brackets, list markers or quotes.
_LATIN_WORD = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'", min_size=1, max_size=8).filter(
    lambda word: any(char.isalpha() for char in word) and not word.startswith("'")
)
_HAN_WORD = st.text(alphabet="你好世界我们走吧今天天气真不错是的很适合出去", min_size=1, max_size=6)
_PUNCT = st.sampled_from(["", "", "", ".", "!", "?", ",", "。", "！", "？", "，"])


@st.composite
def utterances(draw: st.DrawFn) -> str:
    words = draw(st.lists(st.one_of(_LATIN_WORD, _HAN_WORD), min_size=1, max_size=8))
    return " ".join(word + draw(_PUNCT) for word in words)


@st.composite
def dialogues(draw: st.DrawFn, alternating: bool = False) -> list[tuple[str, str]]:
    count = draw(st.integers(min_value=2, max_value=8))
    if alternating:
        speakers = ["AB"[index % 2] for index in range(count)]
    else:
        both = st.lists(st.sampled_from("AB"), min_size=count, max_size=count).filter(lambda s: set(s) == {"A", "B"})
        speakers = draw(both)
    return [(speaker, draw(utterances())) for speaker in speakers]


_LABELS = {
    "tags": ("(s1) ", "(s2) "),
    "square": ("[s1] ", "[s2] "),
    "colon_tags": ("s1: ", "s2: "),
    "roles": ("角色1：", "角色2："),
    "speaker": ("Speaker 1: ", "Speaker 2: "),
    "letters": ("A: ", "B: "),
    "jiayi": ("甲：", "乙："),
    "bullets": ("- **A:** ", "- **B:** "),
}


@PROPERTY_SETTINGS
@given(
    turns=dialogues(),
    style=st.sampled_from(sorted(_LABELS)),
    blank_lines=st.booleans(),
    one_line=st.booleans(),
)
def test_labelled_scripts_round_trip(
    turns: list[tuple[str, str]], style: str, blank_lines: bool, one_line: bool
) -> None:
    label_a, label_b = _LABELS[style]
    rendered = [(label_a if speaker == "A" else label_b) + text for speaker, text in turns]
    if one_line and style == "tags":
        script = " ".join(rendered)
    else:
        script = ("\n\n" if blank_lines else "\n").join(rendered)
    dialogue = parse_script(script, ScriptLimits(max_speech_s=10_000))
    assert dialogue.to_json() == [{"speaker": speaker, "text": text} for speaker, text in turns]


@PROPERTY_SETTINGS
@given(turns=dialogues(), names=st.sampled_from([("Alice", "Bob"), ("小明", "小红"), ("Dr. Who", "Mary Jane")]))
def test_named_scripts_round_trip_with_the_first_name_as_a(
    turns: list[tuple[str, str]], names: tuple[str, str]
) -> None:
    first = turns[0][0]
    name_of = {first: names[0], ("B" if first == "A" else "A"): names[1]}
    script = "\n".join(f"{name_of[speaker]}: {text}" for speaker, text in turns)
    dialogue = parse_script(script, ScriptLimits(max_speech_s=10_000))
    relabel = {first: "A", ("B" if first == "A" else "A"): "B"}
    assert dialogue.to_json() == [{"speaker": relabel[speaker], "text": text} for speaker, text in turns]
    assert dialogue.names == {"A": names[0], "B": names[1]}


@PROPERTY_SETTINGS
@given(turns=dialogues(alternating=True))
def test_free_format_keeps_every_line_and_alternates(turns: list[tuple[str, str]]) -> None:
    dialogue = parse_script("\n".join(text for _, text in turns), ScriptLimits(max_speech_s=10_000))
    assert dialogue.to_json() == [{"speaker": speaker, "text": text} for speaker, text in turns]


@PROPERTY_SETTINGS
@given(
    turns=dialogues(),
    directions=st.lists(st.sampled_from(["laughs", "sighs", "笑", "pause", "叹气", "whispers softly"]), max_size=3),
    brackets=st.sampled_from([("(", ")"), ("（", "）"), ("[", "]"), ("【", "】")]),
)
def test_stage_directions_are_kept_apart_and_never_spoken(
    turns: list[tuple[str, str]], directions: list[str], brackets: tuple[str, str]
) -> None:
    speaker, text = turns[0]
    words = text.split(" ")
    for index, direction in enumerate(directions):
        words.insert(min(index * 2, len(words)), f"{brackets[0]}{direction}{brackets[1]}")
    turns = [(speaker, " ".join(words)), *turns[1:]]
    script = "\n".join(f"{speaker}: {text}" for speaker, text in turns)
    dialogue = parse_script(script, ScriptLimits(max_speech_s=10_000))
    assert dialogue.lines[0].text == text
    assert list(dialogue.lines[0].directions) == directions


_ANY_TEXT = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(list("()[]（）【】:：\n\n\n sS12ABab甲乙*#->\"“”0x")),
    ),
    max_size=400,
)

_TOKENS = st.sampled_from(
    ["A:", "B:", "C:", "(s1)", "(s2)", "[s3]", "s2:", "角色1：", "甲：", "Alice:", "Bob:", "Note:", "10:30",
     "https://x.y/z", "(laughs)", "（笑）", "[", ")", "**", "-", ">", "#", "“", "”", "你好", "hello", "World", "。", "!"]
)
_SCRIPT_LIKE = st.lists(
    st.lists(st.one_of(_TOKENS, utterances()), min_size=0, max_size=6).map(" ".join), min_size=1, max_size=10
).map("\n".join)


@PROPERTY_SETTINGS
@given(text=st.one_of(_ANY_TEXT, _SCRIPT_LIKE))
def test_parsing_never_crashes_and_results_are_always_usable(text: str) -> None:
    limits = ScriptLimits()
    try:
        dialogue = parse_script(text, limits)
    except ScriptError as error:
        assert error.message("en") and error.message("zh")
        return
    assert {line.speaker for line in dialogue.lines} == {"A", "B"}
    assert 0 < len(dialogue.lines) <= limits.max_lines
    assert dialogue.estimated_speech_s() <= limits.max_speech_s
    for line in dialogue.lines:
        assert line.text == line.text.strip() and 0 < len(line.text) <= limits.max_line_chars
        assert any(char.isalnum() for char in line.text)
        assert not any(unicodedata.category(char) in ("Cc", "Cf", "Cs") for char in line.text)
        assert "\n" not in line.text
    assert dialogue.to_json() == [{"speaker": line.speaker, "text": line.text} for line in dialogue.lines]


@PROPERTY_SETTINGS
@given(text=st.one_of(_ANY_TEXT, _SCRIPT_LIKE))
@example(text="(S0)0\rA:A\r角色0:")  # 角色0 is the speaker first written (s0), with nothing to say
@example(text="A:\r角色1：0!角色1：(S0)0")  # 角色1 is A, inline
def test_every_letter_of_the_input_survives_somewhere(text: str) -> None:
    """Nothing is silently dropped: each letter ends up spoken, in a direction, a note or a speaker name."""
    try:
        dialogue = parse_script(text, ScriptLimits(max_speech_s=10_000))
    except ScriptError:
        return
    kept = "".join(
        [line.text + "".join(line.directions) for line in dialogue.lines]
        + list(dialogue.notes)
        + list(dialogue.names.values())
    )
    kept = unicodedata.normalize("NFKC", kept)
    for char in _ROLE_LABEL.sub("", unicodedata.normalize("NFKC", text)):
        if char.isalpha() and char not in "sSAB甲乙":  # letters of labels such as (s1), B:, 乙： are markup
            assert char in kept, char


@PROPERTY_SETTINGS
@given(data=st.one_of(st.binary(max_size=600), _SCRIPT_LIKE.map(lambda text: text.encode("utf-16"))))
def test_any_uploaded_bytes_decode_or_are_refused_clearly(data: bytes) -> None:
    try:
        parse_script(decode_script_bytes(data))
    except ScriptError as error:
        assert error.message("en") and error.message("zh")
