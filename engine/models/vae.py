"""Wan2.1's causal 3D VAE: video in [-1, 1] <-> normalised 16-channel latents, fp32.

The network itself is diffusers' `AutoencoderKLWan`, which computes the same function as the reference
`WanVAE_` (tests/engine/test_vae_parity.py holds it to the reference's own outputs). This file adds what
the reference wraps around the network: the per-channel latent normalisation with a precomputed fp32
reciprocal of the std (the reference multiplies by it on encode and divides by it on decode, which is
not bit-identical to dividing by the std), the posterior mean instead of a sample, and the clamp of the
decoded frames. Encoding runs causally over the frames in chunks [0], [1-4], [5-8], ... as the reference
does, so a clip must have 1 + 4k frames.

The chunk loops are written out here instead of calling `AutoencoderKLWan.encode/decode`, for memory: the
layers that work on single frames at the finer resolutions (everything before the encoder's first temporal
downsampling, everything after the decoder's last temporal upsampling) run one frame at a time through the same
causal cache, which computes the same function. diffusers pushes four 960×960 frames of 96-192 channels through
each of those layers at once; one at a time took a whole 960×960 job's peak on one GPU from 68.7 to 62.4 GiB
(docs/benchmarks.md), for about a fifth more VAE time.

With `row_bands` set (several ranks; engine/parallel/vae_rows.py), each rank runs the layers outside the mid
blocks for its band of rows only: before each 3×3 convolution there, the rows just beyond the band come from the
neighbouring ranks (one row each side, a few kilobytes), so every rank computes its rows exactly, with no overlap;
the bands are gathered where the mid blocks' attention needs the whole frame, and at the end. A band is a fraction
of the frame, so the per-frame layers then take a whole chunk's frames at once again, which is faster.

No file I/O here: engine/weights.py reads `Wan2.1_VAE.pth` and renames its keys for this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import CACHE_T, WanCausalConv3d, WanResample
from torch import nn

from engine.parallel.sequence import join_uneven, split_sizes

# Per-channel statistics of Wan2.1 latents (spec §3.12), part of the model like diffusers' config.
WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip


@dataclass(frozen=True)
class VAEConfig:
    """Shape of the VAE; the defaults are `Wan2.1_VAE.pth`."""

    base_dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
    latents_std: tuple[float, ...] = WAN21_LATENTS_STD

    @classmethod
    def tiny(cls) -> VAEConfig:
        """Same topology and strides (4x8x8, 16 latent channels), a few thousand times fewer weights."""
        return cls(base_dim=4, num_res_blocks=1)

    def __post_init__(self) -> None:
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            raise ValueError(f"latents_mean/std need {self.z_dim} values, one per latent channel")

    @property
    def temporal_stride(self) -> int:
        return 2 ** sum(self.temporal_downsample)

    @property
    def spatial_stride(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)


class WanVAE(nn.Module):
    """Encodes a clip to the normalised posterior mean and decodes latents back to clamped frames."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.autoencoder = AutoencoderKLWan(
            base_dim=config.base_dim,
            z_dim=config.z_dim,
            dim_mult=list(config.dim_mult),
            num_res_blocks=config.num_res_blocks,
            attn_scales=[],
            temperal_downsample=list(config.temporal_downsample),
            dropout=0.0,
            latents_mean=list(config.latents_mean),
            latents_std=list(config.latents_std),
        )
        # fp32 whatever the weights' dtype; not in the state dict (they are config, not checkpoint).
        shape = (1, config.z_dim, 1, 1, 1)
        mean = torch.tensor(config.latents_mean, dtype=torch.float32).view(shape)
        inv_std = (1.0 / torch.tensor(config.latents_std, dtype=torch.float32)).view(shape)
        self.register_buffer("latents_mean", mean, persistent=False)
        self.register_buffer("latents_inv_std", inv_std, persistent=False)
        self.row_bands: RowBands | None = None  # set for several ranks: each computes its band of rows

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, 1+4k, H, W] in [-1, 1] -> normalised latent mean [B, z, 1+k, H/8, W/8]."""
        frames = video.shape[2]
        if (frames - 1) % self.config.temporal_stride:
            raise ValueError(f"the VAE encodes 1 + {self.config.temporal_stride}k frames, got {frames}")
        if self.autoencoder.use_tiling:  # `--vae_tiling`: diffusers' tiled path, which has its own chunk loop
            mean = self.autoencoder.encode(video).latent_dist.mode()
        else:
            mean = self._encode_chunks(video)
        return (mean - self.latents_mean.to(mean.dtype)) * self.latents_inv_std.to(mean.dtype)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, z, T, h, w] -> frames [B, 3, 1 + 4(T-1), 8h, 8w] clamped to [-1, 1]."""
        return torch.cat(list(self.decode_stream(latents)), dim=2)

    def decode_stream(self, latents: torch.Tensor) -> Iterator[torch.Tensor]:
        """`decode` in pieces as they are ready, in order: each latent frame's pixel frames [B, 3, 1 or 4, 8h, 8w]
        (the tiled path yields the whole clip at once). Lets the caller encode the first frames while the VAE is
        still decoding the last."""
        latents = latents / self.latents_inv_std.to(latents.dtype) + self.latents_mean.to(latents.dtype)
        if self.autoencoder.use_tiling:
            yield self.autoencoder.decode(latents).sample
            return
        for frames in self._decode_frames(latents):
            yield frames.clamp_(-1.0, 1.0)

    def _encode_chunks(self, video: torch.Tensor) -> torch.Tensor:
        """`AutoencoderKLWan._encode` and the posterior mean, the per-frame layers one frame at a time (or, with
        `row_bands`, the layers before the mid block on this rank's band of rows, a chunk at a time)."""
        encoder, cache = self.autoencoder.encoder, CausalCache(self.autoencoder.encoder)
        per_frame = per_frame_prefix(encoder)
        scale, rows = self.config.spatial_stride, video.shape[3] // self.config.spatial_stride
        with _banded(self.row_bands, [encoder.conv_in, *encoder.down_blocks]) as bands:
            if bands is not None:
                low, high = bands.span(rows)
                video = video[:, :, :, low * scale : high * scale]
            stride = self.config.temporal_stride
            chunks = [video[:, :, :1], *video[:, :, 1:].split(stride, dim=2)]
            latents = []
            for chunk in chunks:
                frames = []
                for group in chunk.split(1 if bands is None else stride, dim=2):
                    cache.restart()
                    x = cache.conv(encoder.conv_in, group)
                    for layer in encoder.down_blocks[:per_frame]:
                        x = layer(x, feat_cache=cache.slots, feat_idx=cache.index)
                    frames.append(x)
                x = torch.cat(frames, dim=2)
                for layer in encoder.down_blocks[per_frame:]:
                    x = layer(x, feat_cache=cache.slots, feat_idx=cache.index)
                if bands is not None:  # the mid block's attention needs every row
                    x = bands.join(x, rows)
                x = encoder.mid_block(x, feat_cache=cache.slots, feat_idx=cache.index)
                latents.append(cache.conv(encoder.conv_out, encoder.nonlinearity(encoder.norm_out(x))))
        moments = self.autoencoder.quant_conv(torch.cat(latents, dim=2))
        return moments[:, : self.config.z_dim]  # the mean half of the diagonal Gaussian's parameters

    def _decode_frames(self, latents: torch.Tensor) -> Iterator[torch.Tensor]:
        """`AutoencoderKLWan._decode` without the clamp, one latent frame's pixels at a time: the per-frame up blocks
        and head one frame at a time (or, with `row_bands`, everything after the mid block on this rank's band of
        rows, all of a latent frame's frames at once, gathered per latent frame)."""
        decoder, cache = self.autoencoder.decoder, CausalCache(self.autoencoder.decoder)
        per_frame = per_frame_suffix(decoder)
        shared_blocks = decoder.up_blocks[: len(decoder.up_blocks) - per_frame]
        rows = latents.shape[3]
        x = self.autoencoder.post_quant_conv(latents)
        with _banded(self.row_bands, [*decoder.up_blocks, decoder.conv_out]) as bands:
            low, high = (0, rows) if bands is None else bands.span(rows)
            for index, latent in enumerate(x.split(1, dim=2)):
                first = index == 0
                cache.restart()
                y = cache.conv(decoder.conv_in, latent)
                y = decoder.mid_block(y, feat_cache=cache.slots, feat_idx=cache.index)[:, :, :, low:high]
                for block in shared_blocks:
                    y = block(y, feat_cache=cache.slots, feat_idx=cache.index, first_chunk=first)
                resume, frames = cache.index[0], []
                for group in y.split(1 if bands is None else y.shape[2], dim=2):
                    cache.index[0] = resume
                    for block in decoder.up_blocks[len(shared_blocks) :]:
                        group = block(group, feat_cache=cache.slots, feat_idx=cache.index, first_chunk=first)
                    frames.append(cache.conv(decoder.conv_out, decoder.nonlinearity(decoder.norm_out(group))))
                pixels = torch.cat(frames, dim=2)
                yield pixels if bands is None else bands.join(pixels, rows, self.config.spatial_stride)


@dataclass(frozen=True)
class RowBands:
    """The VAE's rows shared by `count` ranks, in contiguous bands in rank order (engine/parallel/vae_rows.py makes
    one from a process group). `all_gather(t)` returns every rank's `t`, all of one shape, in rank order."""

    index: int
    count: int
    all_gather: Callable[[torch.Tensor], list[torch.Tensor]]

    def span(self, rows: int) -> tuple[int, int]:
        """This rank's band [low, high) of `rows` rows."""
        sizes = split_sizes(rows, self.count)
        low = sum(sizes[: self.index])
        return low, low + sizes[self.index]

    def join(self, band: torch.Tensor, rows: int, scale: int = 1) -> torch.Tensor:
        """The whole frame (dim 3) from every rank's band of its `rows` rows, at `scale` rows per row."""
        return join_uneven(band, 3, [size * scale for size in split_sizes(rows, self.count)], self.all_gather)

    def neighbour_rows(self, x: torch.Tensor, dim: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The row just above this band along `dim` (the previous rank's last) and the row just below it (the next
        rank's first); None at the frame's top and bottom."""
        edges = torch.cat([x.narrow(dim, 0, 1), x.narrow(dim, x.shape[dim] - 1, 1)], dim=dim).contiguous()
        every = self.all_gather(edges)
        above = every[self.index - 1].narrow(dim, 1, 1) if self.index > 0 else None
        below = every[self.index + 1].narrow(dim, 0, 1) if self.index + 1 < self.count else None
        return above, below


@contextmanager
def _banded(bands: RowBands | None, layers: list[nn.Module]) -> Iterator[RowBands | None]:
    """While inside, the 3×3 convolutions in `layers` compute a band of rows exactly: each gets the rows just
    beyond its input's band from the neighbouring ranks, and what those rows add to its output is cut off again
    (a stride-2 downsampling's bottom zero row is replaced by the next band's first row instead)."""
    if bands is None:
        yield None
        return
    added: dict[nn.Module, tuple[int, int]] = {}

    def widen(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        dim = x.ndim - 2
        above, below = bands.neighbour_rows(x, dim)
        added[module] = (int(above is not None), int(below is not None))
        return torch.cat([row for row in (above, x, below) if row is not None], dim=dim)

    def before_causal(module: WanCausalConv3d, args: tuple) -> tuple:
        x, cache = args[0], args[1] if len(args) > 1 else None
        if cache is None or module._padding[4] == 0:  # the convolution ignores a cache it does not pad with
            return (widen(module, x), *args[1:])
        wide = widen(module, torch.cat([cache.to(x.device), x], dim=2))  # one exchange for both
        return wide[:, :, cache.shape[2] :], wide[:, :, : cache.shape[2]]

    def before_conv2d(module: nn.Conv2d, args: tuple) -> tuple:
        return (widen(module, args[0]),)

    def before_downsample(module: nn.Conv2d, args: tuple) -> tuple | None:
        x = args[0]  # zero-padded by one row at the bottom (and one column at the right)
        band = x.narrow(2, 0, x.shape[2] - 1)
        _, below = bands.neighbour_rows(band, 2)
        return None if below is None else (torch.cat([band, below], dim=2),)

    def after(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        top, bottom = added.pop(module)
        dim = output.ndim - 2
        return output.narrow(dim, top, output.shape[dim] - top - bottom)

    handles = []
    for layer in layers:
        for module in layer.modules():
            if isinstance(module, WanCausalConv3d) and module._padding[2] > 0:
                handles += [module.register_forward_pre_hook(before_causal), module.register_forward_hook(after)]
            elif isinstance(module, WanResample) and module.mode.startswith("upsample"):
                conv = module.resample[1]
                handles += [conv.register_forward_pre_hook(before_conv2d), conv.register_forward_hook(after)]
            elif isinstance(module, WanResample) and module.mode.startswith("downsample"):
                handles.append(module.resample[1].register_forward_pre_hook(before_downsample))
    try:
        yield bands
    finally:
        for handle in handles:
            handle.remove()


class CausalCache:
    """The frames each causal convolution carries from one call to the next (diffusers' protocol: a slot per
    convolution, filled in call order, and a one-element index list the layers advance). `restart` before each
    chunk; a chunk split into frames restarts each frame at the index where the split began."""

    def __init__(self, coder: nn.Module) -> None:
        self.slots: list[torch.Tensor | None] = [None] * sum(isinstance(m, WanCausalConv3d) for m in coder.modules())
        self.index = [0]

    def restart(self) -> None:
        self.index[0] = 0

    def conv(self, conv: WanCausalConv3d, x: torch.Tensor) -> torch.Tensor:
        """A causal convolution the coder calls itself (conv_in, conv_out), carrying its last CACHE_T frames."""
        slot, carried = self.index[0], x[:, :, -CACHE_T:].clone()
        if carried.shape[2] < CACHE_T and self.slots[slot] is not None:
            carried = torch.cat([self.slots[slot][:, :, -1:], carried], dim=2)
        out = conv(x, self.slots[slot])
        self.slots[slot] = carried
        self.index[0] += 1
        return out


def _is_temporal(resample: WanResample | None) -> bool:
    return resample is not None and resample.mode in ("downsample3d", "upsample3d")


def per_frame_prefix(encoder: nn.Module) -> int:
    """How many of the encoder's leading layers act on each frame alone (all before the first temporal
    downsampling): they may run frame by frame."""
    for count, layer in enumerate(encoder.down_blocks):
        if isinstance(layer, WanResample) and _is_temporal(layer):
            return count
    return len(encoder.down_blocks)


def per_frame_suffix(decoder: nn.Module) -> int:
    """How many of the decoder's trailing up blocks act on each frame alone (all after the last temporal
    upsampling)."""
    count = 0
    for block in reversed(decoder.up_blocks):
        if _is_temporal(block.upsamplers[0] if block.upsamplers is not None else None):
            break
        count += 1
    return count
