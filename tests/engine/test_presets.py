"""Presets: the size buckets, the tiny and full-random presets' models, what the full preset needs on disk, and the
engine's prompt cache."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from PIL import Image

from engine.models.t5 import tokenize_prompts
from engine.presets import (
    PIXELS_PER_TOKEN,
    Placement,
    bucket_size,
    character_tokenizer,
    get_preset,
    load_models,
    missing_files,
)
from engine.stages.conditioning import NEGATIVE_PROMPT, PromptCache, build_prompt, encode_prompts, prepare_conditioning
from engine.stages.tts import (
    SAMPLES_PER_FRAME,
    _build_kmodel,
    kokoro_82m_config,
    speak_at_speech_rate,
    tiny_kokoro_config,
)
from engine.weights import WeightsError
from storage.buckets import SIZE_BUCKETS


@pytest.mark.parametrize("quality", ["480p", "720p"])
def test_a_frame_composed_at_a_bucket_size_renders_at_that_size(quality):
    for height, width in SIZE_BUCKETS[quality].values():
        assert bucket_size(quality, height, width) == (height, width)


def test_bucket_follows_the_frame_aspect():
    assert bucket_size("480p", 1440, 2560) == (448, 896)  # spec §1.3: 0.5625 -> 0.50
    assert bucket_size("720p", 1440, 2560) == (704, 1280)  # -> 0.55
    assert bucket_size("720p", 1324, 2146) == (768, 1216)  # multi3.png, 0.617 -> 0.63
    with pytest.raises(ValueError, match="1080p"):
        bucket_size("1080p", 100, 100)


def test_tiny_sizes_keep_the_aspect_on_the_token_grid():
    tiny = get_preset("tiny")
    for quality, table in SIZE_BUCKETS.items():
        for height, width in table.values():
            small = tiny.frame_size(quality, height, width)
            assert all(side % PIXELS_PER_TOKEN == 0 and side >= 2 * PIXELS_PER_TOKEN for side in small)
            assert small[0] / small[1] == pytest.approx(height / width, rel=0.35)
    assert tiny.frame_size("720p", 960, 960) == (96, 96)
    assert tiny.frame_size("480p", 448, 896) == (48, 96)
    assert get_preset("full").frame_size("720p", 960, 960) == (960, 960)


def test_unknown_preset_is_named():
    with pytest.raises(ValueError, match="huge"):
        get_preset("huge")


def test_full_preset_names_every_missing_file(tmp_path):
    missing = {path.relative_to(tmp_path).as_posix() for path in missing_files(tmp_path)}
    assert {
        "Wan2.1-I2V-14B-480P/diffusion_pytorch_model.safetensors.index.json",
        "Wan2.1-I2V-14B-480P/multitalk.safetensors",
        "Wan2.1-I2V-14B-480P/Wan2.1_VAE.pth",
        "Wan2.1-I2V-14B-480P/models_t5_umt5-xxl-enc-bf16.pth",
        "Wan2.1-I2V-14B-480P/models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth",
        "Wan2.1-I2V-14B-480P/google/umt5-xxl",
        "chinese-wav2vec2-base/config.json",
        "chinese-wav2vec2-base/model.safetensors",
    } <= missing
    with pytest.raises(WeightsError, match=r"missing weight files: .*Wan2\.1_VAE\.pth"):
        load_models("full", tmp_path)
    with pytest.raises(WeightsError, match="weights directory"):
        load_models("full", None)


def test_tiny_models_fit_together_and_are_seeded():
    first, second, other = load_models("tiny"), load_models("tiny"), load_models("tiny", seed=1)
    dit = first.dit.config
    assert dit.text_dim == first.t5.config.dim and dit.text_len == first.t5.config.text_len
    assert dit.image_dim == first.clip.config.dim and dit.image_tokens == first.clip.config.num_tokens
    assert dit.audio.feature_dim == first.wav2vec.config.hidden_size
    assert dit.audio.feature_layers == first.wav2vec.config.num_hidden_layers
    for a, b in zip(first.dit.state_dict().values(), second.dit.state_dict().values()):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, c) for a, c in zip(first.vae.state_dict().values(), other.vae.state_dict().values()))
    assert not any(p.requires_grad for p in first.dit.parameters())


def test_building_tiny_models_leaves_the_global_rng_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    load_models("tiny")
    assert torch.equal(torch.rand(3), expected)


def test_character_tokenizer_pads_truncates_and_ends_with_eos():
    tokenizer = character_tokenizer(64)
    ids, mask = tokenize_prompts(tokenizer, ["Hi there", "x" * 40, "好"], 16)
    assert ids.shape == mask.shape == (3, 16)
    assert ids[0, :9].tolist()[-1] == 1 and mask[0].sum() == 9  # 8 characters + EOS, then padding (id 0)
    assert ids[0, 9:].eq(0).all()
    assert mask[1].all() and ids[1, -1] == 1  # truncated, EOS kept
    assert ids[2, 0] == 2  # unknown character
    assert int(ids.max()) < 64
    with pytest.raises(ValueError, match="vocabulary"):
        character_tokenizer(16)


def test_full_random_builds_the_full_shapes_without_allocating():
    models = load_models("full-random", placement=Placement(device="meta", wav2vec_device="meta"))
    preset, full = models.preset, get_preset("full")
    assert (preset.dit, preset.vae, preset.t5, preset.clip, preset.wav2vec) == (
        full.dit, full.vae, full.t5, full.clip, full.wav2vec)  # fmt: skip
    assert not preset.needs_weights and preset.frame_size("720p", 960, 960) == (960, 960)
    expected = {  # parameters (dtype) of the published models: MultiTalk's 14B DiT, umT5-XXL's encoder, ...
        "dit": (18_882_046_784, torch.bfloat16), "t5": (5_680_910_336, torch.bfloat16),
        "clip": (611_088_640, torch.float16), "vae": (126_892_531, torch.float32),
        "wav2vec": (94_371_712, torch.float32),
    }  # fmt: skip
    for name, (count, dtype) in expected.items():
        module = getattr(models, name)
        assert all(tensor.is_meta for tensor in [*module.parameters(), *module.buffers()]), name  # nothing allocated
        assert sum(p.numel() for p in module.parameters()) == count, name
        assert {p.dtype for p in module.parameters()} == {dtype}, name
    assert torch.get_default_dtype() == torch.float32  # restored after building in bf16 / fp16


def test_models_are_built_in_their_own_dtype():
    """`full-random`'s path at tiny size on the CPU: the init kernels run in bf16 / fp16, the default dtype returns."""
    preset = replace(get_preset("tiny"), dit_dtype=torch.bfloat16, t5_dtype=torch.bfloat16, clip_dtype=torch.float16)
    models = load_models(preset)
    for module, dtype in ((models.dit, torch.bfloat16), (models.t5, torch.bfloat16), (models.clip, torch.float16),
                          (models.vae, torch.float32)):  # fmt: skip
        assert {p.dtype for p in module.parameters()} == {dtype}
        assert all(torch.isfinite(p.float()).all() for p in module.parameters())
    assert models.vae.latents_inv_std.dtype == torch.float32  # explicit dtypes are kept
    assert torch.get_default_dtype() == torch.float32


def test_full_random_kokoro_has_kokoro_82m_shapes():
    config = kokoro_82m_config()
    with torch.device("meta"):
        kokoro = _build_kmodel(config)
    assert sum(p.numel() for p in kokoro.parameters()) == 81_810_022  # Kokoro-82M
    assert max(config["vocab"].values()) < config["n_token"] == 178 and min(config["vocab"].values()) >= 1


def test_random_kokoro_speaks_three_frames_per_phoneme():
    kokoro = _build_kmodel(tiny_kokoro_config()).eval()
    speak_at_speech_rate(kokoro)
    phonemes = "həlˈO wˈɜɹld"
    style = 0.3 * torch.randn(1, 256, generator=torch.Generator().manual_seed(0))
    output = kokoro(phonemes, style, 1.0, return_output=True)
    assert output.pred_dur.tolist() == [3] * (len(phonemes) + 2)  # and the two boundary tokens
    assert output.audio.numel() == (len(phonemes) + 2) * 3 * SAMPLES_PER_FRAME


def _conditioning(models, scene: str):
    return prepare_conditioning(
        t5=models.t5, tokenizer=models.tokenizer, vae=models.vae, clip=models.clip, frame=Image.new("RGB", (64, 48)),
        boxes=None, size=(32, 48), scene=scene, frame_num=5, dtype=torch.float32, device="cpu",
        prompt_cache=models.prompt_cache,
    )  # fmt: skip


def test_t5_runs_once_per_distinct_prompt_per_engine():
    models = load_models("tiny")
    forwards = []
    models.t5.register_forward_hook(lambda module, args, output: forwards.append(args[0].shape[0]))
    first = _conditioning(models, "A beach at dusk.")
    assert forwards == [1, 1]  # the prompt and the negative prompt, each alone
    again = _conditioning(models, "A beach at dusk.")
    assert forwards == [1, 1]  # the same scene: no T5 at all
    assert torch.equal(again.text.prompt, first.text.prompt) and torch.equal(again.text.negative, first.text.negative)
    other = _conditioning(models, "A kitchen.")
    assert forwards == [1, 1, 1]  # a new scene: its prompt only
    uncached = encode_prompts(models.t5, models.tokenizer, build_prompt("A kitchen."), NEGATIVE_PROMPT, device="cpu")
    assert torch.equal(other.text.prompt, uncached.prompt) and torch.equal(other.text.negative, uncached.negative)
    assert load_models("tiny").prompt_cache is not models.prompt_cache  # one cache per engine


def test_prompt_cache_drops_the_least_recently_used_prompt():
    models = load_models("tiny")
    forwards = []
    models.t5.register_forward_hook(lambda module, args, output: forwards.append(1))
    cache = PromptCache(capacity=2)

    def encode(prompt: str) -> torch.Tensor:
        return cache.states(models.t5, models.tokenizer, prompt, device="cpu")

    for prompt in ("a", "b", "a", "c"):  # "a" used again just before "c" arrives: "b" goes
        encode(prompt)
    assert len(forwards) == 3 and len(cache) == 2
    encode("a")
    assert len(forwards) == 3
    encode("b")
    assert len(forwards) == 4


def test_the_config_and_command_lines_know_every_preset():
    from engine.presets import PRESETS
    from storage.settings import ENGINE_PRESETS

    assert set(ENGINE_PRESETS) == set(PRESETS)
