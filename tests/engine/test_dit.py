"""MultiTalkDiT: published state-dict layout, parity with the public reference, determinism, input checks."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from engine.models import DiTConfig, MultiTalkDiT, SequenceShard, register_attention_backend
from engine.models.attention import attention
from engine.models.audio_proj import group_audio_by_latent_frame
from engine.models.dit import label_rope, reference_attention_map, rotate_pairs, speaker_label_positions

PARITY_TOLERANCE = 1e-5  # relative, fp32


def published_dit_shapes() -> dict[str, tuple[int, ...]]:
    """Spec §4.1: the 1633 tensors of Wan2.1-I2V-14B + MultiTalk, written out from the table."""
    D, ffn = 5120, 13824
    shapes: dict[str, tuple[int, ...]] = {
        "patch_embedding.weight": (D, 36, 1, 2, 2), "patch_embedding.bias": (D,),
        "text_embedding.0.weight": (D, 4096), "text_embedding.0.bias": (D,),
        "text_embedding.2.weight": (D, D), "text_embedding.2.bias": (D,),
        "time_embedding.0.weight": (D, 256), "time_embedding.0.bias": (D,),
        "time_embedding.2.weight": (D, D), "time_embedding.2.bias": (D,),
        "time_projection.1.weight": (6 * D, D), "time_projection.1.bias": (6 * D,),
        "head.modulation": (1, 2, D), "head.head.weight": (64, D), "head.head.bias": (64,),
        "img_emb.proj.0.weight": (1280,), "img_emb.proj.0.bias": (1280,),
        "img_emb.proj.1.weight": (1280, 1280), "img_emb.proj.1.bias": (1280,),
        "img_emb.proj.3.weight": (D, 1280), "img_emb.proj.3.bias": (D,),
        "img_emb.proj.4.weight": (D,), "img_emb.proj.4.bias": (D,),
        "audio_proj.proj1.weight": (512, 46080), "audio_proj.proj1.bias": (512,),
        "audio_proj.proj1_vf.weight": (512, 73728), "audio_proj.proj1_vf.bias": (512,),
        "audio_proj.proj2.weight": (512, 512), "audio_proj.proj2.bias": (512,),
        "audio_proj.proj3.weight": (24576, 512), "audio_proj.proj3.bias": (24576,),
        "audio_proj.norm.weight": (768,), "audio_proj.norm.bias": (768,),
    }
    for i in range(40):
        block = {
            "modulation": (1, 6, D),
            "self_attn.norm_q.weight": (D,), "self_attn.norm_k.weight": (D,),
            "norm3.weight": (D,), "norm3.bias": (D,),
            "cross_attn.norm_q.weight": (D,), "cross_attn.norm_k.weight": (D,), "cross_attn.norm_k_img.weight": (D,),
            "ffn.0.weight": (ffn, D), "ffn.0.bias": (ffn,), "ffn.2.weight": (D, ffn), "ffn.2.bias": (D,),
            "audio_cross_attn.q_linear.weight": (D, D), "audio_cross_attn.q_linear.bias": (D,),
            "audio_cross_attn.kv_linear.weight": (2 * D, 768), "audio_cross_attn.kv_linear.bias": (2 * D,),
            "audio_cross_attn.proj.weight": (D, D), "audio_cross_attn.proj.bias": (D,),
            "norm_x.weight": (D,), "norm_x.bias": (D,),
        }
        for name in ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
                     "cross_attn.v", "cross_attn.o", "cross_attn.k_img", "cross_attn.v_img"):
            block[f"{name}.weight"] = (D, D)
            block[f"{name}.bias"] = (D,)
        shapes.update({f"blocks.{i}.{key}": shape for key, shape in block.items()})
    return shapes


@pytest.fixture(scope="module")
def reference_model(load_fixture) -> MultiTalkDiT:
    """The tiny DiT holding the reference run's random weights (fixtures/dit/reference_weights)."""
    model = MultiTalkDiT(DiTConfig.tiny())
    model.load_state_dict(load_fixture("dit/reference_weights"), strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def two_speakers(load_fixture) -> dict[str, torch.Tensor]:
    return load_fixture("dit/forward_two_speakers")


def _call(model: MultiTalkDiT, inputs: dict[str, torch.Tensor], **overrides: torch.Tensor) -> torch.Tensor:
    args = {**inputs, **overrides}
    with torch.no_grad():
        return model(
            args["latents"], args["timestep"], args["text_states"], args["image_states"], args["cond_latents"],
            args["audio"], args["region_masks"],
        )


# --- layout ------------------------------------------------------------------------------------------------------


def test_full_size_state_dict_is_exactly_the_published_one():
    with torch.device("meta"):
        model = MultiTalkDiT(DiTConfig())
    ours = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    expected = published_dit_shapes()
    assert len(expected) == 1633
    assert sorted(set(ours) - set(expected)) == []  # unexpected keys
    assert sorted(set(expected) - set(ours)) == []  # missing keys
    assert {name: shape for name, shape in ours.items() if expected[name] != shape} == {}
    assert list(model.buffers()) == []
    assert sum(p.numel() for p in model.parameters()) == 18_882_046_784  # spec §3.1


def test_full_size_shapes_at_480p_follow_the_spec_table():
    """Spec §1.4, 448x896, two speakers, on the meta device (shapes only, no memory)."""
    with torch.device("meta"):
        model = MultiTalkDiT(DiTConfig()).to(torch.bfloat16)
        frames, h, w = 21, 56, 112
        tokens, cond = model.embed(
            torch.randn(1, 16, frames, h, w), torch.tensor([937.5]), torch.randn(1, 300, 4096),
            torch.randn(1, 257, 1280), torch.randn(1, 20, frames, h, w), torch.randn(2, 81, 5, 12, 768),
            torch.ones(3, h, w),
        )
        velocity = model.finish(model.blocks[0](tokens, cond), cond)
    assert tokens.shape == (1, 32928, 5120) and tokens.dtype == torch.bfloat16
    assert cond.context.shape == (1, 769, 5120)
    assert cond.audio_tokens.shape == (21, 64, 768)
    assert cond.token_masks.shape == (3, 1568)
    assert cond.modulation.shape == (1, 6, 5120) and cond.modulation.dtype == torch.float32
    assert velocity.shape == (1, 16, 21, 56, 112) and velocity.dtype == torch.float32


def test_tiny_model_takes_the_reference_state_dict_strictly(load_fixture):
    reference = load_fixture("dit/reference_weights")
    model = MultiTalkDiT(DiTConfig.tiny())
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {
        k: tuple(v.shape) for k, v in reference.items()
    }
    model.load_state_dict(reference, strict=True)


# --- parity with the reference (fixtures/dit/README.md) ---------------------------------------------------------


def test_two_speaker_forward_matches_reference(reference_model, two_speakers, relative_error):
    velocity = _call(reference_model, two_speakers)
    assert velocity.dtype == torch.float32 and velocity.shape == two_speakers["velocity"].shape
    assert relative_error(velocity, two_speakers["velocity"]) <= PARITY_TOLERANCE


def test_one_speaker_forward_matches_reference(reference_model, load_fixture, relative_error):
    one_speaker = load_fixture("dit/forward_one_speaker")
    assert relative_error(_call(reference_model, one_speaker), one_speaker["velocity"]) <= PARITY_TOLERANCE


@pytest.mark.parametrize("fixture", ["forward_two_speakers", "forward_one_speaker"])
def test_audio_projection_matches_reference(reference_model, load_fixture, relative_error, fixture):
    data = load_fixture(f"dit/{fixture}")
    with torch.no_grad():
        tokens = reference_model.audio_proj(data["audio"])
    assert relative_error(tokens, data["audio_tokens"]) <= PARITY_TOLERANCE


def test_every_blocks_reference_attention_map_matches_reference(reference_model, two_speakers, relative_error):
    maps = []
    hooks = [
        block.self_attn.register_forward_hook(lambda module, args, output: maps.append(output[1]))
        for block in reference_model.blocks
    ]
    try:
        _call(reference_model, two_speakers)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(maps) == len(two_speakers["reference_maps"]) == 2
    for ours, theirs in zip(maps, two_speakers["reference_maps"]):
        assert ours.shape == theirs.shape == (1, 3, 72)
        assert relative_error(ours, theirs) <= PARITY_TOLERANCE


def test_speaker_labels_match_reference(two_speakers):
    config = DiTConfig.tiny()
    for ref_map, expected in zip(two_speakers["reference_maps"], two_speakers["label_positions"]):
        labels = speaker_label_positions(ref_map, config.label_range, config.label_interval)
        torch.testing.assert_close(labels, expected, rtol=PARITY_TOLERANCE, atol=PARITY_TOLERANCE)
        # every label class occurs, so the fixture exercises speaker 1, speaker 2 and background
        assert (labels <= 4).any() and (labels >= 20).any() and (labels == 12).any()


def test_label_rope_matches_reference(load_fixture, relative_error):
    pieces = load_fixture("dit/pieces")
    cos, sin = label_rope(pieces["positions"], head_dim=16, theta=10000.0)
    assert relative_error(rotate_pairs(pieces["x"], cos, sin), pieces["rotated"]) <= PARITY_TOLERANCE


def test_reference_attention_map_matches_reference(load_fixture, relative_error):
    pieces = load_fixture("dit/pieces")
    q, k = pieces["q"].transpose(1, 2), pieces["k"].transpose(1, 2)  # [B, L, H, d] -> [B, H, L, d]
    ref_map = reference_attention_map(q, k[:, :, :24], pieces["token_masks"])
    assert relative_error(ref_map[0], pieces["reference_map"]) <= PARITY_TOLERANCE


# --- behaviour ---------------------------------------------------------------------------------------------------


def test_same_inputs_and_seed_give_identical_output(two_speakers):
    outputs = []
    for _ in range(2):
        torch.manual_seed(7)
        model = MultiTalkDiT(DiTConfig.tiny()).eval()
        outputs += [_call(model, two_speakers), _call(model, two_speakers)]
    assert all(torch.equal(outputs[0], other) for other in outputs[1:])


def test_a_batch_equals_its_samples_run_alone(reference_model, two_speakers):
    other_latents = torch.randn_like(two_speakers["latents"])
    batch = {
        key: torch.cat([two_speakers[key], value]) for key, value in {
            "latents": other_latents, "cond_latents": two_speakers["cond_latents"].flip(-1),
            "text_states": two_speakers["text_states"], "image_states": two_speakers["image_states"],
        }.items()
    }
    batched = _call(reference_model, two_speakers, **batch, timestep=torch.tensor([937.5, 400.0]))
    second = _call(
        reference_model, two_speakers, latents=other_latents, cond_latents=two_speakers["cond_latents"].flip(-1),
        timestep=torch.tensor([400.0]),
    )
    torch.testing.assert_close(batched[:1], _call(reference_model, two_speakers), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched[1:], second, rtol=1e-5, atol=1e-5)


def test_region_masks_steer_the_two_speaker_output(reference_model, two_speakers):
    masks = two_speakers["region_masks"]
    swapped = _call(reference_model, two_speakers, region_masks=masks[[1, 0, 2]])
    assert not torch.allclose(swapped, two_speakers["velocity"], rtol=1e-3, atol=1e-3)


def test_boxes_covering_the_whole_frame_leave_no_background_and_still_render(reference_model, two_speakers):
    masks = torch.zeros_like(two_speakers["region_masks"])
    masks[0, :, :6], masks[1, :, 6:] = 1, 1  # speakers' halves touch: the background region is empty
    velocity = _call(reference_model, two_speakers, region_masks=masks)
    assert velocity.isfinite().all()
    token_masks = masks[:, ::2, ::2].flatten(1)  # [3, 24] at token resolution
    ref_map = reference_attention_map(torch.randn(1, 4, 72, 16), torch.randn(1, 4, 24, 16), token_masks)
    assert torch.equal(ref_map[0, 2], torch.zeros(72)) and (ref_map[0, :2] > 0).all()


def test_every_attention_goes_through_the_seam(reference_model, two_speakers):
    calls = []

    def counting(q, k, v):
        calls.append((q.shape, k.shape))
        return attention(q, k, v)

    register_attention_backend("counting", counting)
    settings = [
        (module, name) for module in reference_model.modules() for name in vars(module) if name.endswith("_backend")
    ]
    try:
        for module, name in settings:
            setattr(module, name, "counting")
        velocity = _call(reference_model, two_speakers)
    finally:
        for module, name in settings:
            setattr(module, name, "sdpa")
    # per block: self-attention, reference map, text and image cross-attention, audio cross-attention
    assert len(calls) == 5 * len(reference_model.blocks)
    assert torch.equal(velocity, _call(reference_model, two_speakers))


def test_bf16_weights_run_in_bf16_and_return_fp32(reference_model, two_speakers, relative_error):
    model = MultiTalkDiT(DiTConfig.tiny())
    model.load_state_dict(reference_model.state_dict())
    velocity = _call(model.to(torch.bfloat16).eval(), two_speakers)
    assert velocity.dtype == torch.float32 and velocity.isfinite().all()
    assert relative_error(velocity, two_speakers["velocity"]) < 0.1  # bf16 rounding, not a different function


def test_bf16_speaker_labels_are_quantised_like_the_reference(two_speakers):
    labels = speaker_label_positions(two_speakers["reference_maps"][0].bfloat16(), 24, 4)
    speaker2 = labels[labels >= 16].float()
    assert labels.dtype == torch.bfloat16 and speaker2.numel() > 0
    assert torch.equal(speaker2, (speaker2 * 8).round() / 8)  # spec §3.7: a 0.125 grid in [16, 32)


def test_later_latent_frames_see_contiguous_audio_rows():
    frames, window = 9, 5
    rows = torch.arange(frames)[:, None] + torch.arange(window) - window // 2  # the row each window slot holds
    first, later = group_audio_by_latent_frame(rows[None, :, :, None, None].float(), window, vae_time_stride=4)
    assert first[0, 0, :, 0, 0].tolist() == [-2, -1, 0, 1, 2]
    for k in (1, 2):  # spec §2.5: latent frame k sees rows 4k-5 .. 4k+2
        assert later[0, k - 1, :, 0, 0].tolist() == list(range(4 * k - 5, 4 * k + 3))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"region_masks": None}, "two speakers need region_masks"),
        ({"audio": torch.zeros(2, 8, 5, 2, 32)}, "audio covers 8 video frames"),
        ({"audio": torch.zeros(3, 9, 5, 2, 32)}, "3 audio streams"),
        ({"text_states": torch.zeros(1, 17, 32)}, "17 text tokens"),
        ({"image_states": torch.zeros(1, 256, 32)}, "256 tokens"),
        ({"cond_latents": torch.zeros(1, 16, 3, 8, 12)}, "channels"),
    ],
)
def test_malformed_inputs_are_rejected_by_name(reference_model, two_speakers, override, message):
    with pytest.raises(ValueError, match=message):
        _call(reference_model, two_speakers, **override)


class SimulatedShard(SequenceShard):
    """One rank of a token split, answering its collectives from the whole-sequence reference map."""

    def __init__(self, offset: int, whole_map: torch.Tensor) -> None:
        self.offset = offset
        self.speakers = whole_map[:, :2]

    def global_min(self, x: torch.Tensor) -> torch.Tensor:
        return self.speakers.amin(-1, keepdim=True)

    def global_max(self, x: torch.Tensor) -> torch.Tensor:
        return self.speakers.amax(-1, keepdim=True)


@pytest.mark.parametrize("cuts", [(0, 72), (0, 30, 72), (0, 13, 50, 60, 72)])  # 24 tokens per latent frame
def test_audio_attention_on_token_shards_equals_whole_sequence(reference_model, two_speakers, cuts):
    inputs = [two_speakers[key] for key in
              ("latents", "timestep", "text_states", "image_states", "cond_latents", "audio", "region_masks")]
    with torch.no_grad():
        tokens, cond = reference_model.embed(*inputs)
        ref_map = two_speakers["reference_maps"][0]
        audio_attention = reference_model.blocks[0].audio_cross_attn
        whole = audio_attention(tokens, cond, ref_map)
        pieces = [
            audio_attention(tokens[:, a:b], replace(cond, shard=SimulatedShard(a, ref_map)), ref_map[..., a:b])
            for a, b in zip(cuts, cuts[1:])
        ]
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, rtol=1e-6, atol=1e-6)


class Float64Recorder(TorchDispatchMode):
    """Records the size of every float64 tensor an op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float64:
                self.sizes.append(tensor.numel())
        return out


def test_float64_is_confined_to_the_timestep_sinusoid(reference_model, two_speakers):
    recorder = Float64Recorder()
    with recorder:
        _call(reference_model, two_speakers)
    assert recorder.sizes  # the sinusoid itself is float64, like the reference's
    assert max(recorder.sizes) <= reference_model.config.freq_dim  # [B, freq_dim] at most, never per token


class ThreadGroup:
    """A stand-in process group: ranks are threads, all_gather meets at a barrier."""

    def __init__(self, size: int) -> None:
        self.slots: list[torch.Tensor | None] = [None] * size
        self.barrier = threading.Barrier(size, timeout=60)

    def all_gather(self, rank: int, x: torch.Tensor) -> list[torch.Tensor]:
        self.slots[rank] = x
        self.barrier.wait()
        gathered = list(self.slots)
        self.barrier.wait()  # nobody overwrites a slot before every rank has read them all
        return gathered


class ThreadShard(SequenceShard):
    def __init__(self, group: ThreadGroup, rank: int, offset: int) -> None:
        self.group, self.rank, self.offset = group, rank, offset

    def gather_tokens(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return torch.cat(self.group.all_gather(self.rank, x), dim=dim)

    def global_min(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack(self.group.all_gather(self.rank, x)).amin(0)

    def global_max(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack(self.group.all_gather(self.rank, x)).amax(0)


_current = threading.local()


def gathered_kv_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Context parallelism in its simplest form: local queries against every rank's keys and values."""
    shard = _current.shard
    return attention(q, shard.gather_tokens(k, dim=2), shard.gather_tokens(v, dim=2))


@pytest.mark.parametrize("cuts", [(0, 30, 72), (0, 13, 50, 60, 72)])  # uneven, mid-frame (24 tokens per frame)
def test_token_shards_run_the_same_blocks_as_one_sequence(reference_model, two_speakers, cuts):
    """The split points `MultiTalkDiT` exposes are enough: N shards of the token sequence == 1 whole sequence."""
    register_attention_backend("test-gathered-kv", gathered_kv_attention)
    inputs = [two_speakers[key] for key in
              ("latents", "timestep", "text_states", "image_states", "cond_latents", "audio", "region_masks")]
    group = ThreadGroup(len(cuts) - 1)

    def run_shard(rank: int) -> torch.Tensor:
        start, stop = cuts[rank], cuts[rank + 1]
        _current.shard = ThreadShard(group, rank, start)
        cond_shard = replace(cond, rope_cos=cond.rope_cos[start:stop], rope_sin=cond.rope_sin[start:stop],
                             shard=_current.shard)
        with torch.no_grad():
            return reference_model.run_blocks(tokens[:, start:stop], cond_shard)

    with torch.no_grad():
        tokens, cond = reference_model.embed(*inputs)
    for block in reference_model.blocks:
        block.self_attn.attention_backend = "test-gathered-kv"
    try:
        with ThreadPoolExecutor(len(cuts) - 1) as pool:
            shards = list(pool.map(run_shard, range(len(cuts) - 1)))
    finally:
        for block in reference_model.blocks:
            block.self_attn.attention_backend = "sdpa"
    with torch.no_grad():
        velocity = reference_model.finish(torch.cat(shards, dim=1), cond)
    torch.testing.assert_close(velocity, two_speakers["velocity"], rtol=1e-5, atol=1e-5)
