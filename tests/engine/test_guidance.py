"""Guidance branches, the reference's CFG formulas and APG (spec §5.2-§5.4)."""

from __future__ import annotations

import pytest
import torch

from engine.guidance import AdaptiveProjectedGuidance, Branch, Guidance, GuidanceConfig, branch_conditions

TOLERANCE = 1e-5


def _predictions(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(16, 3, 2, 2, generator=g) for name in ("cond", "drop_text", "uncond", "drop_audio")}


def test_apg_matches_reference_over_consecutive_steps(load_fixture, relative_error):
    """Three calls share one momentum buffer; the first and last exceed the norm threshold of 55."""
    fx = load_fixture("sampling/apg")
    apg = AdaptiveProjectedGuidance(momentum=-0.75, norm_threshold=55.0)
    for i in range(3):
        assert relative_error(apg(fx[f"diff{i}"], fx[f"cond{i}"]), fx[f"out{i}"]) <= TOLERANCE


def test_apg_output_is_clipped_and_orthogonal_to_the_conditional_prediction():
    p = _predictions()
    diff = 40 * p["drop_text"]
    out = AdaptiveProjectedGuidance(momentum=0.0, norm_threshold=55.0)(diff, p["cond"])
    assert diff.norm() > 55
    assert out.norm() <= 55 * (1 + 1e-6)
    cosine = (out * p["cond"]).sum() / (out.norm() * p["cond"].norm())
    assert abs(cosine.item()) < 1e-5


def test_three_pass_combination_is_the_two_difference_formula():
    p = _predictions()
    guidance = Guidance(GuidanceConfig(text_scale=5.0, audio_scale=4.0))
    expected = p["uncond"] + 5.0 * (p["cond"] - p["drop_text"]) + 4.0 * (p["drop_text"] - p["uncond"])
    assert torch.equal(guidance.combine(p), expected)
    # Not the textbook single-scale CFG:
    assert not torch.allclose(guidance.combine(p), p["uncond"] + 5.0 * (p["cond"] - p["uncond"]))


def test_two_pass_mode_is_chosen_by_the_text_scale_alone():
    assert GuidanceConfig(text_scale=1.0).branches == (Branch.COND, Branch.DROP_AUDIO)
    assert GuidanceConfig(text_scale=1.0 + 1e-12).is_two_pass
    assert GuidanceConfig(text_scale=1.5).branches == (Branch.COND, Branch.DROP_TEXT, Branch.UNCOND)
    p = _predictions()
    combined = Guidance(GuidanceConfig(text_scale=1.0, audio_scale=2.0)).combine(p)
    assert torch.equal(combined, p["drop_audio"] + 2.0 * (p["cond"] - p["drop_audio"]))


@pytest.mark.parametrize("text_scale", [1.0, 5.0])
def test_apg_without_momentum_clipping_or_projection_is_vanilla_cfg(text_scale):
    """With a difference orthogonal to cond, zero momentum and no clipping, APG is the identity (spec §5.4)."""
    p = _predictions(3)
    cond = torch.zeros_like(p["cond"])
    cond[0] = 1.0  # cond lives in channel 0; every other branch differs from it only elsewhere
    others = {k: v.clone() for k, v in p.items() if k != "cond"}
    for v in others.values():
        v[0] = 1.0
    preds = {"cond": cond, **others}
    config = GuidanceConfig(text_scale=text_scale, audio_scale=3.0, apg_momentum=0.0, apg_norm_threshold=0.0)
    vanilla = Guidance(config).combine(preds)
    with_apg = Guidance(GuidanceConfig(**{**config.__dict__, "use_apg": True})).combine(preds)
    torch.testing.assert_close(with_apg, vanilla, atol=1e-5, rtol=1e-5)


def test_apg_momentum_restarts_with_a_new_guidance_object():
    p = _predictions()
    config = GuidanceConfig(use_apg=True)
    first = Guidance(config)
    a = first.combine(p)
    b = first.combine(p)  # momentum -0.75 now shrinks the difference
    fresh = Guidance(config).combine(p)
    assert not torch.allclose(a, b)
    assert torch.equal(a, fresh)


def test_branch_conditions_follow_the_reference_table():
    audio = torch.randn(2, 81, 5, 12, 8)
    image = {"clip": torch.randn(1, 4), "y": torch.randn(20, 3)}
    cond = {"text_states": "prompt", "audio": audio, **image}
    three = branch_conditions(GuidanceConfig(), cond, negative_text="negative")
    assert list(three) == ["cond", "drop_text", "uncond"]
    assert three["cond"]["text_states"] == "prompt" and three["cond"]["audio"] is audio
    assert three["drop_text"]["text_states"] == "negative" and three["drop_text"]["audio"] is audio
    assert three["uncond"]["text_states"] == "negative"
    # One all-zero stream even for two speakers: the model's single-person path.
    assert three["uncond"]["audio"].shape == (1, 81, 5, 12, 8) and not three["uncond"]["audio"].any()
    for branch in three.values():
        assert branch["clip"] is image["clip"] and branch["y"] is image["y"]
    two = branch_conditions(GuidanceConfig(text_scale=1.0), cond, negative_text="negative")
    assert list(two) == ["cond", "drop_audio"]
    assert two["drop_audio"]["text_states"] == "prompt" and two["drop_audio"]["audio"].shape[0] == 1


def test_velocity_calls_each_branch_by_name_in_order():
    calls = []

    def model(latent, t, *, branch, scale):
        calls.append(branch)
        return latent * scale

    guidance = Guidance(GuidanceConfig())
    latent = torch.ones(16, 1, 1, 1)
    conditions = {"cond": {"scale": 2.0}, "drop_text": {"scale": 1.0}, "uncond": {"scale": 0.0}}
    out = guidance.velocity(model, latent, torch.tensor([500.0]), conditions)
    assert calls == ["cond", "drop_text", "uncond"]
    torch.testing.assert_close(out, latent * (0 + 5.0 * (2 - 1) + 4.0 * (1 - 0)))
    with pytest.raises(ValueError, match="uncond"):
        del conditions["uncond"]
        guidance.velocity(model, latent, torch.tensor([500.0]), conditions)
