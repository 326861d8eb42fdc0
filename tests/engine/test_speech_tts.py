"""The Kokoro wrapper: offline G2P per language, voice/language routing, strict checkpoint loading, determinism.

Runs the `kokoro` package's real `KModel` at the tiny preset's size (random weights) and misaki's real G2P.
No real Kokoro-82M weights exist on CI, so no test compares against the published model's audio; the `full`
loading path is exercised with a checkpoint in Kokoro's own file layout written from the tiny model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.stages.tts import (
    MAX_PHONEMES,
    SAMPLES_PER_FRAME,
    KokoroTTS,
    SpeechError,
    _load_kokoro_weights,
    load_tts,
    pipeline_lang_code,
    split_phonemes,
    tiny_kokoro_config,
)
from engine.weights import WeightsError

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tts() -> KokoroTTS:
    return load_tts(None, preset="tiny", seed=5)


# Run in a fresh interpreter so that imports happen under the block too: sockets refuse, subprocesses refuse
# (spaCy's model download shells out to pip), the hub is offline and jieba gets an empty cache directory.
_OFFLINE_SCRIPT = """
import json, socket, subprocess
def refuse(*args, **kwargs):
    raise OSError("network access in an offline test")
socket.socket.connect = socket.create_connection = socket.getaddrinfo = refuse
subprocess.Popen.__init__ = refuse
from engine.stages.tts import load_tts
tts = load_tts(None, preset="tiny")
english = tts.synthesize("Hello there.", voice="af_heart", language="en")
chinese = tts.synthesize("你好。", voice="zf_xiaoxiao", language="zh")
print(json.dumps({"en": tts.phonemize("Hello there.", language="en", voice="af_heart"),
                  "zh": tts.phonemize("你好。", language="zh", voice="zf_xiaoxiao"),
                  "samples": [len(english), len(chinese)]}))
"""


def test_g2p_and_synthesis_need_no_network(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", _OFFLINE_SCRIPT], cwd=REPO_ROOT, env=env, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    spoken = json.loads(result.stdout.strip().splitlines()[-1])
    assert spoken["en"] == "həlˈO ðˈɛɹ."
    assert spoken["zh"] == "ni↓xau↓."
    assert all(samples > 0 for samples in spoken["samples"])


def test_english_lines_use_misakis_lexicon_and_spacy_tags(tts):
    assert tts.phonemize("Do you know multi-talk?", language="en", voice="af_heart") == "dˈu ju nˈO mˈʌltitˌɔk?"
    # spaCy's tagger decides the homograph: past-tense "read" after "I", future "read" after "she'll".
    assert tts.phonemize("I read the book; she'll read it tomorrow.", language="en", voice="am_adam") == (
        "ˌI ɹˈɛd ðə bˈʊk; ʃil ɹˈid ɪt təmˈɑɹO."
    )


def test_british_voices_get_british_pronunciation(tts):
    american = tts.phonemize("Hello there, mate.", language="en", voice="af_heart")
    british = tts.phonemize("Hello there, mate.", language="en", voice="bf_emma")
    assert british == "həlˈQ ðˈɛː, mˈAt."
    assert american != british


def test_mandarin_lines_read_numbers_and_embedded_english_words(tts):
    phonemes = tts.phonemize("我用iPhone拍的，花了2000块。", language="zh", voice="zf_xiaoxiao")
    assert tts.phonemize("iPhone", language="en", voice="af_heart") in phonemes
    assert "Phone" not in phonemes  # misaki's v1.0 Mandarin front end would pass the letters through
    assert not any(character.isdigit() for character in phonemes)  # 2000 is read as 两千
    assert "↓" in phonemes and "↘" in phonemes  # tones


def test_chinese_line_with_an_english_voice_is_refused(tts):
    with pytest.raises(SpeechError, match="Mandarin voice"):
        tts.synthesize("你好。", voice="af_heart", language="zh")
    with pytest.raises(SpeechError):
        pipeline_lang_code("zh", "bm_george")


def test_lines_route_to_the_pipeline_of_their_language():
    assert pipeline_lang_code("zh", "zm_yunxi") == "z"
    assert pipeline_lang_code("en", "zm_yunxi") == "a"  # a Mandarin voice reads English lines as American
    assert pipeline_lang_code("en", "af_heart") == "a"
    assert pipeline_lang_code("en", "bf_emma") == "b"


@pytest.mark.parametrize("voice", ["ef_dora", "jf_alpha", "af heart", "../voices/af_heart", ""])
def test_voices_outside_duets_languages_are_refused(voice):
    with pytest.raises(SpeechError):
        pipeline_lang_code("en", voice)


def test_long_phoneme_strings_are_cut_at_the_best_break():
    sentence = "ðə kwˈɪk bɹˈWn fˈɑks, ʤˈʌmps ˈOvəɹ ðə lˈAzi dˈɔɡ. "  # 51 symbols with its space
    phonemes = (sentence * 25).strip()
    pieces = split_phonemes(phonemes)
    assert all(len(piece) <= MAX_PHONEMES for piece in pieces)
    assert all(piece.endswith(".") for piece in pieces)  # sentence ends beat the commas
    assert " ".join(pieces) == phonemes

    no_sentences = ("ə bˈɪt, " * 100).strip()
    assert all(piece.endswith(",") for piece in split_phonemes(no_sentences)[:-1])
    words = ("wˈʌn " * 200).strip()
    assert " ".join(split_phonemes(words)) == words
    assert split_phonemes("x" * 1100) == ["x" * 510, "x" * 510, "x" * 80]
    assert split_phonemes("  ") == []


def test_audio_is_whole_frames_and_follows_the_text_and_speed(tts):
    short = tts.synthesize("Yes.", voice="af_heart", language="en", seed=1)
    long = tts.synthesize("Yes, I know it, sure.", voice="af_heart", language="en", seed=1)
    fast = tts.synthesize("Yes, I know it, sure.", voice="af_heart", language="en", seed=1, speed=2.0)
    assert short.dtype == np.float32 and short.ndim == 1
    assert all(len(audio) % SAMPLES_PER_FRAME == 0 for audio in (short, long, fast))
    assert len(long) > 3 * len(short)
    assert 0.35 * len(long) < len(fast) < 0.65 * len(long)
    assert np.isfinite(long).all() and np.abs(long).max() > 0


def test_synthesis_depends_only_on_its_inputs_and_seed(tts):
    before = torch.get_rng_state()
    first = tts.synthesize("Hi.", voice="am_adam", language="en", seed=7)
    torch.manual_seed(1234)  # the caller's RNG state must not matter...
    again = tts.synthesize("Hi.", voice="am_adam", language="en", seed=7)
    other = tts.synthesize("Hi.", voice="am_adam", language="en", seed=8)
    other_voice = tts.synthesize("Hi.", voice="af_heart", language="en", seed=7)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)  # Kokoro's excitation noise comes from the seed
    assert not np.array_equal(first[: len(other_voice)], other_voice[: len(first)])
    torch.manual_seed(0)
    torch.set_rng_state(before)
    tts.synthesize("Hi.", voice="am_adam", language="en", seed=7)
    assert torch.equal(torch.get_rng_state(), before)  # ...and is left as it was


def _write_kokoro_folder(root: Path, tts: KokoroTTS, voices: tuple[str, ...]) -> Path:
    """A `Kokoro-82M` folder as the hub ships it: config, `{part: {"module." + key: tensor}}`, voice packs."""
    folder = root / "Kokoro-82M"
    (folder / "voices").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(tiny_kokoro_config()), encoding="utf-8")
    checkpoint = {name: {f"module.{key}": value for key, value in part.state_dict().items()}
                  for name, part in tts.model.named_children()}  # fmt: skip
    # transformers before 4.31 saved ALBERT's position ids; later versions keep them out of the state dict.
    checkpoint["bert"]["module.embeddings.position_ids"] = torch.arange(MAX_PHONEMES + 2).unsqueeze(0)
    # The published file has no affine parameters for the prosody predictor's AdaIN instance norms.
    checkpoint["predictor"] = {key: value for key, value in checkpoint["predictor"].items()
                               if not (".norm1.norm." in key or ".norm2.norm." in key)}  # fmt: skip
    assert len(checkpoint["predictor"]) < len(tts.model.predictor.state_dict())
    torch.save(checkpoint, folder / "kokoro-v1_0.pth")
    for voice in voices:
        torch.save(tts.voices[voice].cpu(), folder / "voices" / f"{voice}.pt")
    return folder


def test_full_preset_loads_kokoros_files_and_speaks_like_the_model_they_came_from(tts, tmp_path):
    folder = _write_kokoro_folder(tmp_path, tts, ("af_heart",))
    loaded = load_tts(tmp_path, preset="full")
    expected = tts.synthesize("Hello.", voice="af_heart", language="en", seed=3)
    np.testing.assert_array_equal(loaded.synthesize("Hello.", voice="af_heart", language="en", seed=3), expected)

    with pytest.raises(WeightsError, match="af_bella.pt"):
        loaded.synthesize("Hello.", voice="af_bella", language="en")
    torch.save(torch.zeros(10, 1, 256), folder / "voices" / "am_adam.pt")
    with pytest.raises(WeightsError, match=r"am_adam.pt: expected a \[510, 1, 256\]"):
        loaded.synthesize("Hello.", voice="am_adam", language="en")


def test_full_preset_names_the_missing_files(tmp_path):
    (tmp_path / "Kokoro-82M").mkdir()
    (tmp_path / "Kokoro-82M" / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(WeightsError) as raised:
        load_tts(tmp_path, preset="full")
    assert "kokoro-v1_0.pth" in str(raised.value) and "voices" in str(raised.value)
    assert "config.json" not in str(raised.value)
    with pytest.raises(WeightsError, match="weights directory"):
        load_tts(None, preset="full")


class _TwoParts(torch.nn.Module):
    """A stand-in with Kokoro's checkpoint shape (named parts), one part holding a non-persistent buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.Linear(3, 2)
        self.decoder = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.InstanceNorm1d(2, affine=True))
        self.decoder.register_buffer("positions", torch.arange(4), persistent=False)


def _checkpoint(model: torch.nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    return {name: {f"module.{key}": value.clone() for key, value in part.state_dict().items()}
            for name, part in model.named_children()}  # fmt: skip


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda ckpt: ckpt["decoder"].pop("module.0.bias"), r"missing keys \['0.bias'\]"),
        (lambda ckpt: ckpt["encoder"].update({"module.extra": torch.ones(1)}), r"unexpected keys \['extra'\]"),
        (lambda ckpt: ckpt["encoder"].update({"module.weight": torch.ones(5, 5)}), "size mismatch"),
        (lambda ckpt: ckpt.pop("decoder"), r"parts \['encoder'\], expected \['decoder', 'encoder'\]"),
    ],
)
def test_checkpoint_loading_refuses_anything_but_an_exact_fit(tmp_path, damage, message):
    source, target = _TwoParts(), _TwoParts()
    checkpoint = _checkpoint(source)
    checkpoint["decoder"]["module.positions"] = torch.arange(4)  # a non-persistent buffer: tolerated
    del checkpoint["decoder"]["module.1.weight"], checkpoint["decoder"]["module.1.bias"]  # norm affine: identity
    path = tmp_path / "kokoro-v1_0.pth"
    torch.save(checkpoint, path)
    torch.nn.init.normal_(target.decoder[1].weight)
    _load_kokoro_weights(target, path)
    assert torch.equal(target.encoder.weight, source.encoder.weight)
    assert torch.equal(target.decoder[1].weight, torch.ones(2)) and torch.equal(target.decoder[1].bias, torch.zeros(2))

    damage(checkpoint)
    torch.save(checkpoint, path)
    with pytest.raises(WeightsError, match=message):
        _load_kokoro_weights(_TwoParts(), path)
