"""LoRA merging in the reference's FusionX / lightx2v key format (spec §8.4)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from engine.lora import LoRAError, load_loras, merge_lora, parse_lora

FIXTURES = Path(__file__).parent / "fixtures" / "lora"
TOLERANCE = 1e-5


class TinyWan(nn.Module):
    """Parameter names follow the Wan DiT keys (spec §4.1), as in the fixture's module."""

    def __init__(self):
        super().__init__()
        block = nn.Module()
        block.self_attn = nn.Module()
        block.self_attn.q = nn.Linear(8, 8)
        block.norm3 = nn.LayerNorm(8)
        block.cross_attn = nn.Module()
        block.cross_attn.k_img = nn.Linear(8, 8)
        block.cross_attn.norm_k_img = nn.RMSNorm(8)
        block.ffn = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
        self.blocks = nn.ModuleList([block])
        self.head = nn.Module()
        self.head.head = nn.Linear(8, 4)


@pytest.fixture
def model(load_fixture) -> TinyWan:
    fx = load_fixture("lora/merge")
    module = TinyWan()
    module.load_state_dict({k.removeprefix("base."): v for k, v in fx.items() if k.startswith("base.")}, strict=True)
    return module


def test_two_loras_merge_like_the_reference(model, load_fixture, relative_error):
    load_loras(model, [FIXTURES / "lora_a.safetensors", FIXTURES / "lora_b.safetensors"], [0.8, 1.2])
    fx = load_fixture("lora/merge")
    for name, value in model.state_dict().items():
        expected = fx[f"merged.{name}"]
        assert relative_error(value, expected) <= TOLERANCE, name
        if not torch.equal(fx[f"base.{name}"], expected):
            assert not torch.equal(value, fx[f"base.{name}"])


def test_alpha_is_ignored_and_scale_is_linear(model):
    up, down = torch.randn(8, 2), torch.randn(2, 8)
    base = model.blocks[0].self_attn.q.weight.detach().clone()
    lora = {
        "diffusion_model.blocks.0.self_attn.q.lora_up.weight": up,
        "diffusion_model.blocks.0.self_attn.q.lora_down.weight": down,
        "diffusion_model.blocks.0.self_attn.q.alpha": torch.tensor(1.0),  # rank 2, alpha 1: would halve it
    }
    assert merge_lora(model, parse_lora(lora), scale=1.5) == 1
    torch.testing.assert_close(model.blocks[0].self_attn.q.weight, base + 1.5 * up @ down)


def test_merge_keeps_the_weight_dtype():
    module = TinyWan().to(torch.bfloat16)
    before = module.head.head.bias.detach().clone()
    merge_lora(module, parse_lora({"diffusion_model.head.head.diff_b": torch.ones(4)}), scale=0.5)
    assert module.head.head.bias.dtype == torch.bfloat16
    torch.testing.assert_close(module.head.head.bias, before + 0.5)


@pytest.mark.parametrize(
    "lora,message",
    [
        ({"diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.ones(2, 8)}, "lora_A"),  # PEFT naming
        ({"blocks.0.self_attn.q.diff_b": torch.ones(8)}, "blocks.0.self_attn.q.diff_b"),  # no prefix
        ({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.ones(2, 8)}, "lora_up"),
        ({"diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.ones(8, 2)}, "lora_down"),
        ({"diffusion_model.blocks.0.self_attn.q.alpha": torch.tensor(4.0)}, "no LoRA weights"),
    ],
)
def test_malformed_files_raise_naming_the_key(lora, message):
    with pytest.raises(LoRAError) as raised:
        parse_lora(lora, source="bad.safetensors")
    assert message in raised.value.admin_detail
    assert "bad.safetensors" in raised.value.admin_detail
    assert "LoRA" in raised.value.user_message


def test_a_bad_target_leaves_the_model_untouched(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    updates = parse_lora(
        {
            "diffusion_model.head.head.diff_b": torch.ones(4),  # fine, listed first
            "diffusion_model.blocks.0.cross_attn.k.diff_b": torch.ones(8),  # T2V-only layer this model lacks
        }
    )
    with pytest.raises(LoRAError) as missing:
        merge_lora(model, updates, scale=1.0)
    assert "blocks.0.cross_attn.k.bias" in missing.value.admin_detail
    with pytest.raises(LoRAError) as misshapen:
        merge_lora(model, parse_lora({"diffusion_model.blocks.0.ffn.0.diff": torch.ones(8, 8)}), scale=1.0)
    assert "(16, 8)" in misshapen.value.admin_detail and "(8, 8)" in misshapen.value.admin_detail
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_each_file_needs_its_own_scale(model, tmp_path):
    with pytest.raises(ValueError, match="one scale per file"):
        load_loras(model, [FIXTURES / "lora_a.safetensors", FIXTURES / "lora_b.safetensors"], [1.0])
    with pytest.raises(LoRAError) as missing:
        load_loras(model, [tmp_path / "missing.safetensors"], [1.0])
    assert "missing.safetensors" in missing.value.admin_detail
    path = tmp_path / "norm_only.safetensors"
    save_file({"diffusion_model.blocks.0.norm3.diff": torch.full((8,), 0.25)}, path)
    before = model.blocks[0].norm3.weight.detach().clone()
    load_loras(model, [path], [2.0])
    torch.testing.assert_close(model.blocks[0].norm3.weight, before + 0.5)
