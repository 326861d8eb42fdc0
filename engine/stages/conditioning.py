"""Conditioning stage: the prompt, the reference frame and the speakers' regions as the DiT consumes them.

Owns the scene prompt's template and the default negative prompt, the reference's resize-and-centre-crop of the
frame to the output size (spec §1.3), the per-speaker region masks built from the job's boxes (§3.8), and the image
conditioning of a chunk (§1.5): CLIP tokens of its last conditioning frame, the VAE latent of its conditioning
frames padded to a whole chunk, and the 4-channel frame mask. What does not change between chunks (text, masks,
the reference frame and the first chunk's image conditioning) is computed once per job in `prepare_conditioning`;
`encode_image_condition` is called again for every later chunk with its motion frames. Prompt states outlive the
job in the engine's `PromptCache`. The T5, CLIP and VAE work is timed as parts of the encode stage
(`engine.stages.clock.part`). No file I/O: the frame arrives decoded.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from engine.models.clip import WanCLIPImageEncoder
from engine.models.t5 import UMT5TextEncoder, tokenize_prompts
from engine.models.vae import WanVAE
from engine.stages.clock import part
from storage.contract import Box

# The reference's `multitalk_14B.sample_neg_prompt` (wan/configs/wan_multitalk_14B.py), used verbatim.
NEGATIVE_PROMPT = (
    "bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, "
    "overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, poorly "
    "drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still picture, messy "
    "background, three legs, many people in the background, walking backwards"
)
DEFAULT_SCENE = "Two people sit side by side, facing the camera, in a softly lit room."
# The reference takes a free prompt; Duet's users describe only the scene, so the prompt says what happens in it
# in the style of the reference's examples (who is where, that they talk in turns, natural motion).
PROMPT_TEMPLATE = (
    "{scene} The person on the left and the person on the right are having a conversation, taking turns to speak "
    "and listening to each other, with natural lip movements, facial expressions and small head movements. "
    "Realistic, high quality, steady camera."
)
# Regions when a job carries no boxes: the reference's defaults for two people (face_scale 0.05, spec §3.8).
_DEFAULT_MARGIN = 0.05


def build_prompt(scene: str) -> str:
    """The DiT prompt for a scene description (an empty one gets a neutral scene)."""
    scene = " ".join(scene.split()) or DEFAULT_SCENE
    if scene[-1] not in ".!?。！？":
        scene += "."
    return PROMPT_TEMPLATE.format(scene=scene)


@dataclass(frozen=True)
class TextConditioning:
    """umT5 states of the prompt and of the negative prompt, real tokens only: [1, n, text_dim] each."""

    prompt: torch.Tensor
    negative: torch.Tensor


class PromptCache:
    """umT5 states of the prompts an engine encoded lately, so that T5 runs once per distinct prompt text.

    The negative prompt never changes and scenes repeat, so most jobs encode nothing. An entry is keyed by the exact
    prompt text and by what else shapes the states: the encoder's text length, dtype and device, and the device the
    states are delivered to; it holds at most [text_len, dim] (4 MiB for umT5-XXL in bf16). The least recently used
    entry goes first. One cache per engine (`EngineModels.prompt_cache`), used with that engine's encoder and
    tokenizer only. Every rank renders the same jobs in the same order, so ranks hit and miss together (an
    FSDP-sharded T5 runs its collectives on all ranks or on none).
    """

    def __init__(self, capacity: int = 8) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def states(
        self, encoder: UMT5TextEncoder, tokenizer: Any, prompt: str, *, device: torch.device | str
    ) -> torch.Tensor:
        """[1, n, text_dim] on `device`: from the cache, or encoded now (and kept)."""
        weight = next(encoder.parameters())
        key = (prompt, encoder.config.text_len, weight.dtype, str(weight.device), str(torch.device(device)))
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        states = _encode_prompt(encoder, tokenizer, prompt, weight.device).to(device)
        self._entries[key] = states
        if len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return states


@torch.inference_mode()
def _encode_prompt(encoder: UMT5TextEncoder, tokenizer: Any, prompt: str, text_device: torch.device) -> torch.Tensor:
    """The prompt's real tokens only: the reference runs umT5 over all `text_len` positions and keeps the rows of
    the real ones, which the masked padding cannot reach. A scene prompt is a tenth of the 512 positions, so this
    is most of umT5's time, which `--t5_cpu` pays on the CPU."""
    ids, mask = tokenize_prompts(tokenizer, [prompt], encoder.config.text_len)
    real = int(mask.sum())
    (states,) = encoder.encode(ids[:, :real].to(text_device), mask[:, :real].to(text_device))
    return states[None]


def encode_prompts(
    encoder: UMT5TextEncoder,
    tokenizer: Any,
    prompt: str,
    negative: str,
    *,
    device: torch.device | str,
    cache: PromptCache | None = None,
) -> TextConditioning:
    """Both prompts' states on `device` for the DiT, each encoded alone (through `cache` when given).

    One prompt per call, as the reference does with its T5 on the CPU; on the GPU it batches the two, whose rows do
    not interact, so the states agree up to the rounding of a different matrix shape. Encoding them apart keeps a
    job's states independent of which prompts happen to be cached.
    """
    cache = PromptCache() if cache is None else cache
    with part("t5"):
        return TextConditioning(
            prompt=cache.states(encoder, tokenizer, prompt, device=device),
            negative=cache.states(encoder, tokenizer, negative, device=device),
        )


# --- the reference frame and the speakers' regions at the output size ---------------------------------------------


@dataclass(frozen=True)
class CoverCrop:
    """Scale to cover (height, width), then centre-crop: the reference's arithmetic, rounding quirks included."""

    resized: tuple[int, int]  # (height, width) after scaling
    top: int
    left: int
    size: tuple[int, int]

    @classmethod
    def of(cls, source: tuple[int, int], size: tuple[int, int]) -> CoverCrop:
        """`ceil` of a float64 product that may land one ulp above an integer (and then overshoots a pixel), and
        round-half-to-even offsets, exactly as the reference computes them (spec §1.3)."""
        scale = max(size[0] / source[0], size[1] / source[1])
        resized = (math.ceil(scale * source[0]), math.ceil(scale * source[1]))
        return cls(resized, round((resized[0] - size[0]) / 2), round((resized[1] - size[1]) / 2), size)

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        """[..., resized_h, resized_w] -> [..., size_h, size_w]."""
        return x[..., self.top : self.top + self.size[0], self.left : self.left + self.size[1]]


def fit_frame(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """An RGB(A) image -> [3, H, W] float32 in [-1, 1]: PIL's antialiased bilinear resize, then the centre crop.

    An alpha channel is dropped, not composited, as the reference does.
    """
    cover = CoverCrop.of((image.height, image.width), size)
    resized = image.convert("RGB").resize((cover.resized[1], cover.resized[0]), Image.BILINEAR)
    pixels = torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1)  # [3, h, w] uint8
    return (cover.crop(pixels).float() / 255.0 - 0.5) * 2.0


def _default_boxes(height: int, width: int) -> tuple[Box, Box]:
    half = width // 2
    top, bottom = int(_DEFAULT_MARGIN * height), int((1 - _DEFAULT_MARGIN) * height)
    left = Box(x0=int(_DEFAULT_MARGIN * half), y0=top, x1=int((1 - _DEFAULT_MARGIN) * half), y1=bottom)
    right = Box(
        x0=int(_DEFAULT_MARGIN * half + half), y0=top, x1=int((1 - _DEFAULT_MARGIN) * half + half), y1=bottom
    )
    return left, right


def region_masks(
    boxes: Sequence[Box] | None, source: tuple[int, int], size: tuple[int, int], latent_size: tuple[int, int]
) -> torch.Tensor:
    """Speaker A, speaker B and background regions at latent resolution: [3, h, w] float 0/1.

    Boxes are (x0, y0, x1, y1) pixels of the `source` (height, width) frame, x1/y1 exclusive. The reference
    writes the same box as `[y0, x0, y1, x1]` (rows first, spec §3.8); both mean rows y0..y1-1 and columns
    x0..x1-1. The background is every pixel outside both boxes. The masks follow the frame through the same cover
    and crop (nearest neighbour, PyTorch's legacy `nearest` as the reference), then down to the latent grid.
    """
    height, width = source
    boxes = _default_boxes(height, width) if boxes is None else boxes
    if len(boxes) != 2:
        raise ValueError(f"expected one box per speaker (2), got {len(boxes)}")
    masks = torch.zeros(3, height, width)
    for index, box in enumerate(boxes):
        masks[index, box.y0 : box.y1, box.x0 : box.x1] = 1.0
    masks[2] = 1.0 - masks[:2].amax(0)
    cover = CoverCrop.of(source, size)
    masks = cover.crop(F.interpolate(masks[None], size=cover.resized, mode="nearest"))
    return (F.interpolate(masks, size=latent_size, mode="nearest")[0] > 0).float()


# --- a chunk's image conditioning -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageConditioning:
    """What a chunk's conditioning frames give the DiT (every guidance branch shares it)."""

    image_states: torch.Tensor  # [1, tokens, clip_dim] in the DiT dtype: CLIP of the last conditioning frame
    cond_latents: torch.Tensor  # [1, 4 + z, T, h, w] in the DiT dtype: frame mask, then VAE latent
    motion_latents: torch.Tensor  # [z, T_cond, h, w] fp32: the conditioning frames' latents (DiT-dtype rounded)


def frame_mask(num_cond_frames: int, frame_num: int, latent_hw: tuple[int, int], time_stride: int) -> torch.Tensor:
    """[time_stride, T, h, w]: 1 for the conditioning frames, the first frame repeated to fill latent frame 0.

    The pixel-rate mask gets `time_stride - 1` extra copies of frame 0 in front, then each group of
    `time_stride` consecutive entries is one latent frame, the position in the group being the channel.
    """
    mask = torch.zeros(frame_num)
    mask[:num_cond_frames] = 1.0
    mask = torch.cat([mask[:1].expand(time_stride - 1), mask])
    mask = mask.view(-1, time_stride).t()  # [time_stride, T]
    return mask[:, :, None, None].expand(-1, -1, *latent_hw)


@torch.inference_mode()
def encode_image_condition(
    vae: WanVAE, clip: WanCLIPImageEncoder, frames: torch.Tensor, *, frame_num: int, dtype: torch.dtype
) -> ImageConditioning:
    """Conditioning frames [3, n, H, W] in [-1, 1] (1 reference frame, or the motion frames) -> the chunk's
    image conditioning. The frames are followed by zeros (mid-grey) up to `frame_num` and encoded as one clip;
    the latents are rounded to the DiT dtype before the motion latents are taken from them, as the reference does.
    """
    channels, num_cond, height, width = frames.shape
    vae_dtype = next(vae.parameters()).dtype
    padded = torch.cat([frames, frames.new_zeros(channels, frame_num - num_cond, height, width)], dim=1)
    with part("vae_encode"):
        latent = vae.encode(padded[None].to(vae_dtype))[0].to(dtype)  # [z, T, h, w]
    stride = vae.config.temporal_stride
    mask = frame_mask(num_cond, frame_num, latent.shape[-2:], stride).to(device=latent.device, dtype=dtype)
    clip_dtype = next(clip.parameters()).dtype
    with part("clip"):
        image_states = clip(frames[:, -1][None].to(clip_dtype)).to(dtype)
    return ImageConditioning(
        image_states=image_states,
        cond_latents=torch.cat([mask, latent])[None],
        motion_latents=latent[:, : 1 + (num_cond - 1) // stride].float(),
    )


@dataclass(frozen=True)
class Conditioning:
    """Everything a job's chunks share, computed once."""

    text: TextConditioning
    reference: torch.Tensor  # [3, H, W] fp32 in [-1, 1]: the fitted frame (chunk 0's condition, colour target)
    region_masks: torch.Tensor  # [3, h, w]: speaker A, speaker B, background
    first_chunk: ImageConditioning


def prepare_conditioning(
    *,
    t5: UMT5TextEncoder,
    tokenizer: Any,
    vae: WanVAE,
    clip: WanCLIPImageEncoder,
    frame: Image.Image,
    boxes: Sequence[Box] | None,
    size: tuple[int, int],
    scene: str,
    frame_num: int,
    dtype: torch.dtype,
    device: torch.device | str,
    prompt_cache: PromptCache | None = None,
) -> Conditioning:
    """Prompt states (T5 only for prompts `prompt_cache` lacks), the fitted reference frame, region masks and
    chunk 0's image conditioning."""
    spatial = vae.config.spatial_stride
    latent_size = (size[0] // spatial, size[1] // spatial)
    with part("frame"):
        reference = fit_frame(frame, size).to(device)
        masks = region_masks(boxes, (frame.height, frame.width), size, latent_size).to(device)
    return Conditioning(
        text=encode_prompts(t5, tokenizer, build_prompt(scene), NEGATIVE_PROMPT, device=device, cache=prompt_cache),
        reference=reference,
        region_masks=masks,
        first_chunk=encode_image_condition(vae, clip, reference[:, None], frame_num=frame_num, dtype=dtype),
    )
