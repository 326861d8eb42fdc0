"""The MultiTalk DiT: Wan2.1 I2V-14B with MultiTalk's audio adapter (spec §3).

Reads top-down: config, numeric helpers (timestep sinusoid, rotary embeddings, reference attention map, L-RoPE
labels), norms, the three attentions, the block, embeddings and head, then `MultiTalkDiT`. Parameter names and
shapes are exactly those of the published checkpoints (spec §4.1), so `load_state_dict(strict=True)` takes the
reference state dict as is. Pure compute: no file I/O, no distributed calls; every attention goes through
`engine.models.attention.attention`.

Precision follows the reference when the weights are bf16 (spec §12.1-2): norms and modulation in fp32, the
residual stream rounded back to the weight dtype after every residual add, rotary embeddings in fp32, the output in
fp32. The fp32 islands with weights (the reference's fp32 autocast) are `time_embedding`, `time_projection` and
`head.head`: they run through `_run_fp32` on upcast copies of the stored weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from engine.models.attention import DEFAULT_BACKEND, attention
from engine.models.audio_proj import AudioProjConfig, AudioProjection


@dataclass(frozen=True)
class DiTConfig:
    """Defaults are Wan2.1-I2V-14B-480P's `config.json` plus MultiTalk's code defaults (spec §3.1)."""

    dim: int = 5120
    ffn_dim: int = 13824
    num_heads: int = 40
    num_layers: int = 40
    in_dim: int = 36  # noisy latent 16 + frame mask 4 + conditioning latent 16
    out_dim: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    freq_dim: int = 256  # timestep sinusoid width
    text_dim: int = 4096  # umT5-XXL width
    text_len: int = 512  # text tokens after zero padding
    image_dim: int = 1280  # CLIP ViT-H/14 width
    image_tokens: int = 257  # CLIP class token + 16x16 patches; they come first in the context
    eps: float = 1e-6
    rope_theta: float = 10000.0
    label_range: int = 24  # L-RoPE: speaker 1 labels [0, 4], speaker 2 [20, 24], background 12
    label_interval: int = 4
    audio: AudioProjConfig = field(default_factory=AudioProjConfig)
    attention_backend: str = DEFAULT_BACKEND

    def __post_init__(self) -> None:
        if self.dim % self.num_heads or self.head_dim % 2:
            raise ValueError(f"dim {self.dim} must split into {self.num_heads} heads of even size")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @classmethod
    def tiny(cls) -> DiTConfig:
        """Two layers of width 64 (4 heads of 16): the production classes at a size CPU tests can run."""
        return cls(
            dim=64, ffn_dim=128, num_heads=4, num_layers=2, freq_dim=32, text_dim=32, text_len=16, image_dim=32,
            audio=AudioProjConfig.tiny(),
        )


# ---------------------------------------------------------------------------------------------------------------
# Sequence layout


class SequenceShard:
    """Where a block's tokens sit in the full sequence, and the cross-rank reductions the blocks need.

    The blocks ask three things of the whole sequence: latent frame 0's keys (reference map), the min/max of each
    speaker's map (L-RoPE labels) and which latent frame each token belongs to (audio attention). This base class is
    one rank holding every token: offset 0 and identity collectives. engine/parallel subclasses it for a token
    split; the model code path is the same either way.
    """

    offset = 0  # index of the first local token in the full sequence

    def gather_tokens(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """All ranks' tokens of `x`, concatenated along `dim` in sequence order."""
        return x

    def gather_prefix(self, x: torch.Tensor, dim: int, count: int) -> torch.Tensor:
        """The sequence's first `count` tokens of `x` (e.g. latent frame 0's keys), whichever ranks hold them.

        Correct for any shard through `gather_tokens`; a distributed shard overrides it to move only those tokens.
        """
        return self.gather_tokens(x, dim).narrow(dim, 0, count)

    def global_min(self, x: torch.Tensor) -> torch.Tensor:
        """Elementwise min of `x` over the ranks."""
        return x

    def global_max(self, x: torch.Tensor) -> torch.Tensor:
        return x


WHOLE_SEQUENCE = SequenceShard()


# ---------------------------------------------------------------------------------------------------------------
# Numeric helpers


def timestep_embedding(timestep: torch.Tensor, dim: int) -> torch.Tensor:
    """[B] float timesteps in [0, 1000] -> [B, dim] fp32 as [cos, sin] with frequencies 10000^(-j / (dim/2)).

    Computed in float64 like the reference: t·ω reaches 1000 rad, where fp32 would lose ~1e-4 of phase. It is one
    [B, dim] vector per call, not per token.
    """
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=timestep.device) / half)
    angles = torch.outer(timestep.to(torch.float64), freqs)
    return torch.cat([angles.cos(), angles.sin()], dim=1).float()


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs (2j, 2j+1) by angle j in fp32; cos/sin broadcast to [..., N, d/2]."""
    x0, x1 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2).type_as(x)


def video_rope(
    grid: tuple[int, int, int], head_dim: int, theta: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """3D RoPE angles for a (T, N_h, N_w) token grid in (t, h, w) order -> cos, sin of [L, head_dim / 2], fp32.

    The head_dim/2 pairs split into time / height / width parts (22/21/21 at head_dim 128); each part's
    frequencies use that part's own width in the exponent, as the reference tables do.
    """
    width_hw = 2 * (head_dim // 6)
    widths = (head_dim - 2 * width_hw, width_hw, width_hw)
    angles = []
    for axis, (size, width) in enumerate(zip(grid, widths)):
        freqs = torch.tensor([theta ** (-2 * j / width) for j in range(width // 2)], device=device)
        axis_angles = torch.arange(size, device=device, dtype=torch.float32)[:, None] * freqs  # [size, width/2]
        shape = [1, 1, 1, width // 2]
        shape[axis] = size
        angles.append(axis_angles.view(shape).expand(*grid, width // 2))
    flat = torch.cat(angles, dim=-1).flatten(0, 2)  # [L, head_dim/2]
    return flat.cos(), flat.sin()


def label_rope(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """1D RoPE (L-RoPE) for fractional label positions [..., N] -> cos, sin [..., N, head_dim/2], fp32."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim))
    angles = positions.float()[..., None] * freqs
    return angles.cos(), angles.sin()


def reference_attention_map(
    q: torch.Tensor, ref_k: torch.Tensor, token_masks: torch.Tensor, *, backend: str = DEFAULT_BACKEND
) -> torch.Tensor:
    """How much each token attends to each region of the reference frame (spec §3.8).

    q: [B, H, L, d] RoPE'd queries; ref_k: [B, H, S, d] RoPE'd keys of latent frame 0; token_masks: [C, S].
    Returns [B, C, L]: per region c, the head-mean of the sum over the region's keys of softmax(q·kᵀ/√d), divided by
    the region's size. That is attention with values mask_c / |mask_c|, so the [L, S] matrix is never materialised.
    A region with no token (e.g. no background left between two boxes) gets a zero row, where the reference
    divides by zero and turns the whole video into NaN; a zero row simply never wins the L-RoPE argmax.
    """
    masks = token_masks.float()
    regions = masks.shape[0]
    values = (masks / masks.sum(-1, keepdim=True).clamp(min=1)).to(q.dtype).t()  # [S, C]
    values = F.pad(values, (0, -regions % 8))  # fused GPU kernels need a value width divisible by 8
    values = values.expand(*ref_k.shape[:2], *values.shape)  # [B, H, S, C + pad]
    return attention(q, ref_k, values, backend=backend)[..., :regions].mean(1).transpose(1, 2)


def speaker_label_positions(
    ref_map: torch.Tensor, label_range: int, label_interval: int, shard: SequenceShard = WHOLE_SEQUENCE
) -> torch.Tensor:
    """L-RoPE label of every visual token (spec §3.7): [B, 3, L] reference map -> [B, L] positions.

    A token takes the label of its strongest region (speaker 1, speaker 2, background): a speaker's map value,
    min-max normalised over all tokens (of every shard), maps into that speaker's label range; background is the
    range centre. Evaluated in the map's dtype like the reference (bf16 labels are quantised).
    """
    speakers = ref_map[:, :2]
    low = shard.global_min(speakers.amin(-1, keepdim=True))
    high = shard.global_max(speakers.amax(-1, keepdim=True))
    starts = torch.tensor([0, label_range - label_interval], dtype=ref_map.dtype, device=ref_map.device)
    scaled = (speakers - low) / (high - low + 1e-8) * label_interval + starts[:, None]
    background = torch.full_like(ref_map[:, :1], label_range // 2)
    labels = torch.cat([scaled, background], dim=1)
    return labels.gather(1, ref_map.argmax(1, keepdim=True)).squeeze(1)


# ---------------------------------------------------------------------------------------------------------------
# Norms


class WanRMSNorm(nn.Module):
    """RMSNorm over the full width (before the head split), fp32 math, then scaled in the input dtype."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class WanLayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 and returned in the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).type_as(x)


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    return x.unflatten(-1, (num_heads, -1)).transpose(-3, -2)  # [..., L, D] -> [..., H, L, d]


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-3, -2).flatten(-2)  # [..., H, L, d] -> [..., L, D]


# ---------------------------------------------------------------------------------------------------------------
# Conditioning shared by all blocks


@dataclass(frozen=True)
class DiTConditioning:
    """Everything a block needs besides the token stream; built once per forward by `MultiTalkDiT.embed`.

    Under sequence parallelism `rope_cos` / `rope_sin` follow the token split (dim 0) and `shard` describes the
    local slice (`dataclasses.replace`); the rest is replicated.
    """

    time: torch.Tensor  # [B, D] fp32: the head's modulation input
    modulation: torch.Tensor  # [B, 6, D] fp32: the blocks' shift/scale/gate input
    context: torch.Tensor  # [B, image_tokens + text_len, D]: CLIP tokens first, then text
    audio_tokens: torch.Tensor  # [T, P * context_tokens, audio_dim]: per latent frame, speaker 1's tokens first
    num_speakers: int
    rope_cos: torch.Tensor  # [L, head_dim / 2] fp32
    rope_sin: torch.Tensor
    token_masks: torch.Tensor | None  # [3, S] regions of a latent frame (speaker 1, speaker 2, background); P = 2
    grid: tuple[int, int, int]  # (T, N_h, N_w) tokens
    shard: SequenceShard = WHOLE_SEQUENCE

    @property
    def tokens_per_frame(self) -> int:
        return self.grid[1] * self.grid[2]


# ---------------------------------------------------------------------------------------------------------------
# Attention modules


class WanSelfAttention(nn.Module):
    """Full self-attention over all video tokens with 3D RoPE; also returns the reference attention map.

    Two backends: `attention_backend` runs token-to-token attention, the one call a sequence-parallel backend
    replaces; `local_attention_backend` runs the reference map, whose keys (frame 0) are already whole on every rank.
    """

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.attention_backend = config.attention_backend
        self.local_attention_backend = config.attention_backend
        self.q = nn.Linear(config.dim, config.dim)
        self.k = nn.Linear(config.dim, config.dim)
        self.v = nn.Linear(config.dim, config.dim)
        self.o = nn.Linear(config.dim, config.dim)
        self.norm_q = WanRMSNorm(config.dim, config.eps)
        self.norm_k = WanRMSNorm(config.dim, config.eps)

    def forward(self, x: torch.Tensor, cond: DiTConditioning) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: [B, L, D] -> ([B, L, D], reference map [B, 3, L] or None when there is a single speaker)."""
        q = rotate_pairs(_split_heads(self.norm_q(self.q(x)), self.num_heads), cond.rope_cos, cond.rope_sin)
        k = rotate_pairs(_split_heads(self.norm_k(self.k(x)), self.num_heads), cond.rope_cos, cond.rope_sin)
        v = _split_heads(self.v(x), self.num_heads)
        out = self.o(_merge_heads(attention(q, k, v, backend=self.attention_backend)))
        if cond.num_speakers == 1:
            return out, None  # the map only steers L-RoPE, which a single speaker does not use
        with torch.no_grad():
            ref_keys = cond.shard.gather_prefix(k, dim=2, count=cond.tokens_per_frame)  # latent frame 0
            ref_map = reference_attention_map(q, ref_keys, cond.token_masks, backend=self.local_attention_backend)
        return out, ref_map


class WanImageTextCrossAttention(nn.Module):
    """I2V cross-attention: one query, two key/value sets (CLIP tokens, text tokens), outputs summed."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.image_tokens = config.image_tokens
        self.attention_backend = config.attention_backend
        self.q = nn.Linear(config.dim, config.dim)
        self.k = nn.Linear(config.dim, config.dim)
        self.v = nn.Linear(config.dim, config.dim)
        self.o = nn.Linear(config.dim, config.dim)
        self.k_img = nn.Linear(config.dim, config.dim)
        self.v_img = nn.Linear(config.dim, config.dim)
        self.norm_q = WanRMSNorm(config.dim, config.eps)
        self.norm_k = WanRMSNorm(config.dim, config.eps)
        self.norm_k_img = WanRMSNorm(config.dim, config.eps)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x: [B, L, D], context: [B, image_tokens + text_len, D] -> [B, L, D]. Text padding is attended, unmasked."""
        image, text = context[:, : self.image_tokens], context[:, self.image_tokens :]
        heads = self.num_heads
        q = _split_heads(self.norm_q(self.q(x)), heads)
        text_out = attention(
            q, _split_heads(self.norm_k(self.k(text)), heads), _split_heads(self.v(text), heads),
            backend=self.attention_backend,
        )
        image_out = attention(
            q, _split_heads(self.norm_k_img(self.k_img(image)), heads), _split_heads(self.v_img(image), heads),
            backend=self.attention_backend,
        )
        return self.o(_merge_heads(text_out) + _merge_heads(image_out))


class MultiTalkAudioCrossAttention(nn.Module):
    """Each latent frame's visual tokens attend to that frame's audio tokens (spec §3.6).

    With two speakers, L-RoPE binds speakers to regions: queries are rotated by their token's label (from the
    block's reference map), keys by their speaker's label-range centre, so a token in speaker 1's region is
    phase-aligned with speaker 1's audio tokens. One speaker (also every "null audio" branch): no rotation.
    """

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.rope_theta = config.rope_theta
        self.label_range = config.label_range
        self.label_interval = config.label_interval
        self.attention_backend = config.attention_backend
        self.q_linear = nn.Linear(config.dim, config.dim)
        self.kv_linear = nn.Linear(config.audio.output_dim, 2 * config.dim)
        self.proj = nn.Linear(config.dim, config.dim)

    def speaker_key_positions(self, tokens_per_speaker: int, device: torch.device) -> torch.Tensor:
        """[2 * tokens_per_speaker]: speaker 1's tokens at 2, speaker 2's at 22 (their label ranges' centres)."""
        centres = torch.tensor(
            [self.label_interval / 2, self.label_range - self.label_interval / 2], device=device
        )
        return centres.repeat_interleave(tokens_per_speaker)

    def forward(self, x: torch.Tensor, cond: DiTConditioning, ref_map: torch.Tensor | None) -> torch.Tensor:
        """x: [B, L, D] -> [B, L, D]; x may start and end mid-frame (a sequence shard)."""
        batch, length, per_frame = x.shape[0], x.shape[1], cond.tokens_per_frame
        q = _split_heads(self.q_linear(x), self.num_heads)  # [B, H, L, d]
        k, v = (_split_heads(t, self.num_heads) for t in self.kv_linear(cond.audio_tokens).chunk(2, dim=-1))
        if cond.num_speakers == 2:
            positions = speaker_label_positions(ref_map, self.label_range, self.label_interval, cond.shard)
            cos, sin = label_rope(positions, self.head_dim, self.rope_theta)  # [B, L, d/2]
            q = rotate_pairs(q, cos[:, None], sin[:, None])
            key_positions = self.speaker_key_positions(k.shape[2] // 2, x.device)
            k = rotate_pairs(k, *label_rope(key_positions, self.head_dim, self.rope_theta))
        # Pad the local tokens out to whole latent frames (no-op for the whole sequence), then run one attention
        # batch item per (sample, frame): [B, H, frames*S, d] -> [B*frames, H, S, d].
        lead = cond.shard.offset % per_frame
        first_frame = cond.shard.offset // per_frame
        frames = -(-(lead + length) // per_frame)
        q = F.pad(q, (0, 0, lead, frames * per_frame - lead - length))
        q = q.unflatten(2, (frames, per_frame)).transpose(1, 2).flatten(0, 1)
        k, v = (t[first_frame : first_frame + frames].expand(batch, -1, -1, -1, -1).flatten(0, 1) for t in (k, v))
        out = attention(q, k, v, backend=self.attention_backend)  # [B*frames, H, S, d]
        out = out.unflatten(0, (batch, frames)).transpose(1, 2).flatten(2, 3)[:, :, lead : lead + length]
        return self.proj(_merge_heads(out))


# ---------------------------------------------------------------------------------------------------------------
# Block, embeddings, head


class MultiTalkBlock(nn.Module):
    """Self-attention -> image/text cross-attention -> audio cross-attention -> FFN (spec §3.3)."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.norm1 = WanLayerNorm(config.dim, eps=config.eps, elementwise_affine=False)
        self.self_attn = WanSelfAttention(config)
        self.norm3 = WanLayerNorm(config.dim, eps=config.eps)
        self.cross_attn = WanImageTextCrossAttention(config)
        self.norm_x = WanLayerNorm(config.dim, eps=config.eps)
        self.audio_cross_attn = MultiTalkAudioCrossAttention(config)
        self.norm2 = WanLayerNorm(config.dim, eps=config.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(
            nn.Linear(config.dim, config.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(config.ffn_dim, config.dim)
        )
        self.modulation = nn.Parameter(torch.randn(1, 6, config.dim) / config.dim**0.5)

    def forward(self, x: torch.Tensor, cond: DiTConditioning) -> torch.Tensor:
        """x: [B, L, D] in the model dtype -> same. Modulated inputs and gated adds in fp32, rounded back."""
        dtype = x.dtype
        modulation = self.modulation.float() + cond.modulation  # [B, 6, D] fp32
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = modulation.chunk(6, dim=1)
        attn_out, ref_map = self.self_attn((self.norm1(x).float() * (1 + scale_sa) + shift_sa).to(dtype), cond)
        x = (x + attn_out * gate_sa).to(dtype)
        x = x + self.cross_attn(self.norm3(x), cond.context)
        x = x + self.audio_cross_attn(self.norm_x(x), cond, ref_map)
        ffn_out = self.ffn((self.norm2(x).float() * (1 + scale_ff) + shift_ff).to(dtype))
        return (x + ffn_out * gate_ff).to(dtype)


class WanImageProjection(nn.Module):
    """CLIP tokens -> model width: LayerNorm, Linear, exact GELU, Linear, LayerNorm (eps 1e-5)."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.LayerNorm(config.image_dim), nn.Linear(config.image_dim, config.image_dim), nn.GELU(),
            nn.Linear(config.image_dim, config.dim), nn.LayerNorm(config.dim),
        )

    def forward(self, image_states: torch.Tensor) -> torch.Tensor:
        return self.proj(image_states)


class WanHead(nn.Module):
    """Final modulated LayerNorm + Linear to one patch of latent channels per token, in fp32."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.norm = WanLayerNorm(config.dim, eps=config.eps, elementwise_affine=False)
        self.head = nn.Linear(config.dim, math.prod(config.patch_size) * config.out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, config.dim) / config.dim**0.5)

    def forward(self, x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        """x: [B, L, D], time: [B, D] fp32 -> [B, L, prod(patch) * out_dim] fp32."""
        shift, scale = (self.modulation.float() + time[:, None]).chunk(2, dim=1)
        return _run_fp32(self.head, self.norm(x) * (1 + scale) + shift)


def _run_fp32(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run `module` with its parameters upcast to fp32 (they stay stored in the model dtype)."""
    params = {name: p.float() for name, p in module.named_parameters()}
    return functional_call(module, params, (x.float(),))


# ---------------------------------------------------------------------------------------------------------------
# The model


class MultiTalkDiT(nn.Module):
    """Wan2.1 I2V DiT + MultiTalk audio adapter: predicts the flow velocity of a video latent.

    `forward` = `embed` -> `run_blocks` -> `finish`; the three steps are public so that step caches (TeaCache) can
    skip `run_blocks` and sequence parallelism can wrap it. Sequence-parallel plan: after `embed`, split `tokens`
    [B, L, D] and `cond.rope_cos/rope_sin` [L, d/2] along L (any contiguous split) and set `cond.shard` to a
    `SequenceShard` subclass; run the blocks; gather the tokens before `finish`. Inside a block the self-attention
    `attention` call is where the Ulysses/ring exchange happens (`WanSelfAttention.attention_backend` names a
    registered backend; every other attention keeps a local one, its keys being whole on every rank); everything
    else that needs the whole sequence asks `cond.shard`. The 769 context tokens and the audio tokens stay whole on
    every rank.
    """

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embedding = nn.Conv3d(
            config.in_dim, config.dim, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.text_embedding = nn.Sequential(
            nn.Linear(config.text_dim, config.dim), nn.GELU(approximate="tanh"), nn.Linear(config.dim, config.dim)
        )
        self.time_embedding = nn.Sequential(
            nn.Linear(config.freq_dim, config.dim), nn.SiLU(), nn.Linear(config.dim, config.dim)
        )
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(config.dim, 6 * config.dim))
        self.blocks = nn.ModuleList(MultiTalkBlock(config) for _ in range(config.num_layers))
        self.head = WanHead(config)
        self.img_emb = WanImageProjection(config)
        self.audio_proj = AudioProjection(config.audio)

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text_states: torch.Tensor,
        image_states: torch.Tensor,
        cond_latents: torch.Tensor,
        audio: torch.Tensor,
        region_masks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Flow velocity [B, out_dim, T, h, w] fp32 for the noisy `latents` [B, 16, T, h, w]; see `embed`."""
        tokens, cond = self.embed(latents, timestep, text_states, image_states, cond_latents, audio, region_masks)
        return self.finish(self.run_blocks(tokens, cond), cond)

    def embed(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text_states: torch.Tensor,
        image_states: torch.Tensor,
        cond_latents: torch.Tensor,
        audio: torch.Tensor,
        region_masks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, DiTConditioning]:
        """Patch-embed the latents and build the blocks' conditioning.

        latents: [B, 16, T, h, w] noisy latent. timestep: [B] (or a scalar) float in [0, 1000], the shifted value.
        text_states: [B, n <= text_len, text_dim] umT5 output, zero-padded here to text_len.
        image_states: [B, image_tokens, image_dim] CLIP tokens. cond_latents: [B, 20, T, h, w] = frame mask (4)
        then VAE latent (16). audio: [P, 4(T-1)+1, window, layers, C] wav2vec2 windows per video frame, P = 1 or 2
        speakers, shared by the batch. region_masks: [3, h, w] (speaker 1, speaker 2, background) at latent
        resolution, required when P = 2.
        Returns tokens [B, L, D] in the model dtype and the conditioning.
        """
        config, dtype = self.config, self.dtype
        self._check_inputs(latents, text_states, image_states, cond_latents, audio, region_masks)
        x = self.patch_embedding(torch.cat([latents, cond_latents], dim=1).to(dtype))  # [B, D, T, N_h, N_w]
        grid = tuple(x.shape[2:])
        tokens = x.flatten(2).transpose(1, 2)  # [B, L, D], (t, h, w) order

        timestep = torch.as_tensor(timestep, device=latents.device).reshape(-1).expand(latents.shape[0])
        time = _run_fp32(self.time_embedding, timestep_embedding(timestep, config.freq_dim))
        modulation = _run_fp32(self.time_projection, time).unflatten(1, (6, config.dim))

        text = F.pad(text_states.to(dtype), (0, 0, 0, config.text_len - text_states.shape[1]))
        context = torch.cat([self.img_emb(image_states.to(dtype)), self.text_embedding(text)], dim=1)

        speakers = self.audio_proj(audio.to(dtype))  # [P, T, tokens, C]
        audio_tokens = speakers.transpose(0, 1).flatten(1, 2)  # [T, P * tokens, C], speaker 1 first

        token_masks = None
        if audio.shape[0] == 2:
            token_masks = F.interpolate(region_masks[None].float(), size=grid[1:], mode="nearest")[0] > 0
            token_masks = token_masks.flatten(1).to(dtype)  # [3, S]
        rope_cos, rope_sin = video_rope(grid, config.head_dim, config.rope_theta, latents.device)
        cond = DiTConditioning(
            time=time, modulation=modulation, context=context, audio_tokens=audio_tokens,
            num_speakers=audio.shape[0], rope_cos=rope_cos, rope_sin=rope_sin, token_masks=token_masks, grid=grid,
        )
        return tokens, cond

    def run_blocks(self, tokens: torch.Tensor, cond: DiTConditioning) -> torch.Tensor:
        for block in self.blocks:
            tokens = block(tokens, cond)
        return tokens

    def finish(self, tokens: torch.Tensor, cond: DiTConditioning) -> torch.Tensor:
        """Head + unpatchify: [B, L, D] -> [B, out_dim, T·pt, N_h·ph, N_w·pw] fp32."""
        out = self.head(tokens, cond.time)  # [B, L, pt·ph·pw·c], c fastest
        pt, ph, pw = self.config.patch_size
        out = out.view(out.shape[0], *cond.grid, pt, ph, pw, self.config.out_dim)
        out = out.permute(0, 7, 1, 4, 2, 5, 3, 6)  # [B, c, T, pt, N_h, ph, N_w, pw]
        return out.flatten(6, 7).flatten(4, 5).flatten(2, 3)

    def _check_inputs(
        self,
        latents: torch.Tensor,
        text_states: torch.Tensor,
        image_states: torch.Tensor,
        cond_latents: torch.Tensor,
        audio: torch.Tensor,
        region_masks: torch.Tensor | None,
    ) -> None:
        config = self.config
        if latents.shape[1] + cond_latents.shape[1] != config.in_dim:
            raise ValueError(
                f"latents ({latents.shape[1]}) + cond_latents ({cond_latents.shape[1]}) channels != {config.in_dim}"
            )
        if latents.shape[0] != cond_latents.shape[0] or latents.shape[2:] != cond_latents.shape[2:]:
            raise ValueError(f"cond_latents {tuple(cond_latents.shape)} do not match latents {tuple(latents.shape)}")
        if any(size % patch for size, patch in zip(latents.shape[2:], config.patch_size)):
            raise ValueError(f"latent size {tuple(latents.shape[2:])} is not a multiple of {config.patch_size}")
        if text_states.shape[1] > config.text_len:
            raise ValueError(f"{text_states.shape[1]} text tokens exceed text_len {config.text_len}")
        if image_states.shape[1] != config.image_tokens:
            raise ValueError(f"image_states has {image_states.shape[1]} tokens, expected {config.image_tokens}")
        frames = latents.shape[2]
        if audio.shape[1] != config.audio.vae_time_stride * (frames - 1) + 1:
            raise ValueError(f"audio covers {audio.shape[1]} video frames; {frames} latent frames need "
                             f"{config.audio.vae_time_stride * (frames - 1) + 1}")
        if audio.shape[0] not in (1, 2):
            raise ValueError(f"{audio.shape[0]} audio streams; MultiTalk binds 1 or 2 speakers")
        if audio.shape[0] == 2 and (region_masks is None or region_masks.shape != (3, *latents.shape[3:])):
            shape = None if region_masks is None else tuple(region_masks.shape)
            raise ValueError(f"two speakers need region_masks [3, h, w] = [3, {latents.shape[3]}, "
                             f"{latents.shape[4]}], got {shape}")
