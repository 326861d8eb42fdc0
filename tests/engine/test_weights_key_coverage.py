"""Full-size key coverage: the published checkpoints' keys and shapes (spec §4.3-4.6), converted, are exactly
the state dicts of the full-size models built on the meta device. Uses the same check as loading does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.models.clip import CLIPConfig, WanCLIPImageEncoder
from engine.models.t5 import T5Config, UMT5TextEncoder
from engine.models.vae import VAEConfig, WanVAE
from engine.models.wav2vec import Wav2VecAudioEncoder, Wav2VecConfig
from engine.weights import (
    CheckpointTensors,
    check_tensors,
    convert_clip_key,
    convert_t5_key,
    convert_vae_key,
    convert_wav2vec_key,
    parameters_on_meta,
)

Shapes = dict[str, tuple[int, ...]]


def _checkpoint(shapes: Shapes) -> CheckpointTensors:
    """A stand-in for a checkpoint file: meta tensors of the published shapes."""
    tensors = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    return CheckpointTensors.of_state_dict(tensors, Path("published"))


def _residual(prefix: str, c_in: int, c_out: int) -> Shapes:
    shapes = {
        f"{prefix}.residual.0.gamma": (c_in, 1, 1, 1),
        f"{prefix}.residual.2.weight": (c_out, c_in, 3, 3, 3),
        f"{prefix}.residual.2.bias": (c_out,),
        f"{prefix}.residual.3.gamma": (c_out, 1, 1, 1),
        f"{prefix}.residual.6.weight": (c_out, c_out, 3, 3, 3),
        f"{prefix}.residual.6.bias": (c_out,),
    }
    if c_in != c_out:
        shapes |= {f"{prefix}.shortcut.weight": (c_out, c_in, 1, 1, 1), f"{prefix}.shortcut.bias": (c_out,)}
    return shapes


def _conv(prefix: str, shape: tuple[int, ...]) -> Shapes:
    return {f"{prefix}.weight": shape, f"{prefix}.bias": (shape[0],)}


def _middle(prefix: str, c: int) -> Shapes:
    return (
        _residual(f"{prefix}.0", c, c)
        | {f"{prefix}.1.norm.gamma": (c, 1, 1)}
        | _conv(f"{prefix}.1.to_qkv", (3 * c, c, 1, 1))
        | _conv(f"{prefix}.1.proj", (c, c, 1, 1))
        | _residual(f"{prefix}.2", c, c)
    )


def published_vae() -> Shapes:
    """Wan2.1_VAE.pth as spec §4.5 lays it out."""
    shapes = _conv("encoder.conv1", (96, 3, 3, 3, 3))
    for index, (c_in, c_out) in {0: (96, 96), 1: (96, 96), 3: (96, 192), 4: (192, 192), 6: (192, 384),
                                 7: (384, 384), 9: (384, 384), 10: (384, 384)}.items():  # fmt: skip
        shapes |= _residual(f"encoder.downsamples.{index}", c_in, c_out)
    for index, c in {2: 96, 5: 192, 8: 384}.items():
        shapes |= _conv(f"encoder.downsamples.{index}.resample.1", (c, c, 3, 3))
    for index, c in {5: 192, 8: 384}.items():
        shapes |= _conv(f"encoder.downsamples.{index}.time_conv", (c, c, 3, 1, 1))
    shapes |= _middle("encoder.middle", 384) | {"encoder.head.0.gamma": (384, 1, 1, 1)}
    shapes |= _conv("encoder.head.2", (32, 384, 3, 3, 3)) | _conv("conv1", (32, 32, 1, 1, 1))
    shapes |= _conv("conv2", (16, 16, 1, 1, 1)) | _conv("decoder.conv1", (384, 16, 3, 3, 3))
    shapes |= _middle("decoder.middle", 384)
    for index, (c_in, c_out) in {0: (384, 384), 1: (384, 384), 2: (384, 384), 4: (192, 384), 5: (384, 384),
                                 6: (384, 384), 8: (192, 192), 9: (192, 192), 10: (192, 192), 12: (96, 96),
                                 13: (96, 96), 14: (96, 96)}.items():  # fmt: skip
        shapes |= _residual(f"decoder.upsamples.{index}", c_in, c_out)
    for index in (3, 7):
        shapes |= _conv(f"decoder.upsamples.{index}.resample.1", (192, 384, 3, 3))
        shapes |= _conv(f"decoder.upsamples.{index}.time_conv", (768, 384, 3, 1, 1))
    shapes |= _conv("decoder.upsamples.11.resample.1", (96, 192, 3, 3))
    shapes |= {"decoder.head.0.gamma": (96, 1, 1, 1)} | _conv("decoder.head.2", (3, 96, 3, 3, 3))
    return shapes


def published_t5() -> Shapes:
    """models_t5_umt5-xxl-enc-bf16.pth as spec §4.3 lists it."""
    shapes = {"token_embedding.weight": (256384, 4096), "norm.weight": (4096,)}
    for i in range(24):
        shapes |= {f"blocks.{i}.norm1.weight": (4096,), f"blocks.{i}.norm2.weight": (4096,)}
        shapes |= {f"blocks.{i}.attn.{name}.weight": (4096, 4096) for name in "qkvo"}
        shapes |= {f"blocks.{i}.ffn.gate.0.weight": (10240, 4096), f"blocks.{i}.ffn.fc1.weight": (10240, 4096)}
        shapes |= {f"blocks.{i}.ffn.fc2.weight": (4096, 10240), f"blocks.{i}.pos_embedding.embedding.weight": (32, 64)}
    return shapes


def _layer_norm(prefix: str, c: int) -> Shapes:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,)}


def published_clip() -> Shapes:
    """The whole open-clip XLM-RoBERTa ViT-H/14 file as spec §4.4 lists it (vision, text, log_scale)."""
    shapes = {
        "visual.patch_embedding.weight": (1280, 3, 14, 14),
        "visual.cls_embedding": (1, 1, 1280),
        "visual.pos_embedding": (1, 257, 1280),
        "visual.head": (1280, 1024),
        "log_scale": (),
    }
    shapes |= _layer_norm("visual.pre_norm", 1280) | _layer_norm("visual.post_norm", 1280)
    for i in range(32):
        block = f"visual.transformer.{i}"
        shapes |= _layer_norm(f"{block}.norm1", 1280) | _layer_norm(f"{block}.norm2", 1280)
        shapes |= _conv(f"{block}.attn.to_qkv", (3840, 1280)) | _conv(f"{block}.attn.proj", (1280, 1280))
        shapes |= _conv(f"{block}.mlp.0", (5120, 1280)) | _conv(f"{block}.mlp.2", (1280, 5120))
    shapes |= {"textual.token_embedding.weight": (250002, 1024), "textual.type_embedding.weight": (1, 1024)}
    shapes |= {"textual.pos_embedding.weight": (514, 1024)} | _layer_norm("textual.norm", 1024)
    for i in range(24):
        block = f"textual.blocks.{i}"
        shapes |= {key: shape for name in "qkvo" for key, shape in _conv(f"{block}.attn.{name}", (1024, 1024)).items()}
        shapes |= _layer_norm(f"{block}.norm1", 1024) | _layer_norm(f"{block}.norm2", 1024)
        shapes |= _conv(f"{block}.ffn.0", (4096, 1024)) | _conv(f"{block}.ffn.2", (1024, 4096))
    shapes |= {"textual.head.0.weight": (1024, 1024), "textual.head.2.weight": (1024, 1024)}
    return shapes


def published_wav2vec() -> Shapes:
    """chinese-wav2vec2-base's model file: HF Wav2Vec2ForPreTraining of base geometry (spec §2.3, §4.6)."""
    prefix = "wav2vec2"
    shapes = {f"{prefix}.masked_spec_embed": (768,)}
    shapes[f"{prefix}.feature_extractor.conv_layers.0.conv.weight"] = (512, 1, 10)
    shapes |= _layer_norm(f"{prefix}.feature_extractor.conv_layers.0.layer_norm", 512)  # the group norm
    for i, kernel in enumerate((3, 3, 3, 3, 2, 2), start=1):
        shapes[f"{prefix}.feature_extractor.conv_layers.{i}.conv.weight"] = (512, 512, kernel)
    shapes |= _layer_norm(f"{prefix}.feature_projection.layer_norm", 512)
    shapes |= _conv(f"{prefix}.feature_projection.projection", (768, 512))
    shapes |= {f"{prefix}.encoder.pos_conv_embed.conv.weight_g": (1, 1, 128)}
    shapes |= {f"{prefix}.encoder.pos_conv_embed.conv.weight_v": (768, 48, 128)}
    shapes |= {f"{prefix}.encoder.pos_conv_embed.conv.bias": (768,)} | _layer_norm(f"{prefix}.encoder.layer_norm", 768)
    for i in range(12):
        layer = f"{prefix}.encoder.layers.{i}"
        for name in ("q", "k", "v", "out"):
            shapes |= _conv(f"{layer}.attention.{name}_proj", (768, 768))
        shapes |= _layer_norm(f"{layer}.layer_norm", 768) | _layer_norm(f"{layer}.final_layer_norm", 768)
        shapes |= _conv(f"{layer}.feed_forward.intermediate_dense", (3072, 768))
        shapes |= _conv(f"{layer}.feed_forward.output_dense", (768, 3072))
    shapes |= {"quantizer.codevectors": (1, 640, 128)} | _conv("quantizer.weight_proj", (640, 512))
    shapes |= _conv("project_hid", (256, 768)) | _conv("project_q", (256, 256))
    return shapes


def test_published_tensor_counts_are_the_spec_counts():
    assert len(published_vae()) == 194
    assert len(published_t5()) == 242
    assert len(published_clip()) == 784


@pytest.mark.parametrize(
    ("published", "build", "convert"),
    [
        (published_vae, lambda: WanVAE(VAEConfig()), lambda key: convert_vae_key(key, VAEConfig())),
        (published_t5, lambda: UMT5TextEncoder(T5Config()), convert_t5_key),
        (published_clip, lambda: WanCLIPImageEncoder(CLIPConfig()), lambda key: convert_clip_key(key, CLIPConfig())),
        (published_wav2vec, lambda: Wav2VecAudioEncoder(Wav2VecConfig()), convert_wav2vec_key),
    ],
    ids=["vae", "t5", "clip", "wav2vec"],
)
def test_full_size_model_takes_exactly_the_published_checkpoint(published, build, convert):
    with parameters_on_meta():
        model = build()
    tensors = _checkpoint(published()).converted(convert)
    if isinstance(model, WanCLIPImageEncoder):
        tensors = tensors.reshaped(model.config.embedding_shapes())
    check_tensors(model, tensors, "published checkpoint")  # raises WeightsError naming any difference


def test_clip_keeps_31_of_32_blocks_and_the_whole_vision_stem():
    kept = {key for key in published_clip() if convert_clip_key(key, CLIPConfig()) is not None}
    assert not any(key.startswith(("textual.", "visual.transformer.31.")) for key in kept)
    assert {f"visual.transformer.{i}.mlp.2.bias" for i in range(31)} <= kept
    stem = {"visual.patch_embedding.weight", "visual.cls_embedding", "visual.pos_embedding", "visual.pre_norm.weight"}
    assert stem <= kept
