"""Low-memory placement of the engine's models: the original service's `--num_persistent_param_in_dit N` and
`--offload_model`, decided once after loading (`apply_low_memory`) and carried out by forward hooks, so that no
stage and no step loop moves weights or flushes the allocator itself.

- Block streaming (`BlockStreamer`, `stream_dit`): the DiT's embeddings, head and audio projection (0.32 B
  parameters) stay on the GPU; of its 40 blocks (0.46 B parameters, 0.93 GB in bf16, each), the first ones that fit
  in the budget of N parameters stay there too, and the others keep their weights in one pinned CPU buffer per
  block. A streamed block is copied to the GPU on a side stream while the block before it computes, and its GPU
  copy is dropped once it has run, so at most three streamed blocks occupy the GPU at a time (one running, the
  next one arriving, the previous one until the GPU has finished with it). At 960×960 a block
  computes for ~0.3 s per pass and its copy takes ~40 ms at PCIe Gen5 speed, so the copy hides behind compute;
  only a streamed first block (budget 0) waits for its own copy at the start of each pass.
- Model offload (`--offload_model`, `offload_between_stages`): T5 (11 GB) and CLIP live in CPU memory and come to
  the GPU for their own forward only; whenever T5, CLIP or the VAE runs, the DiT blocks kept on the GPU leave it
  (they come back one at a time, prefetched like streamed blocks, in the next denoising pass). That is where the
  peaks are: the VAE decode of an 81-frame chunk at 960×960 in fp32 holds ~17 GiB of activations (one latent frame
  at a time at full resolution; measured on the CPU at 96 and 192 pixels, it scales with the pixel count), the
  encode of a chunk's conditioning frames ~10 GiB, T5 11 GB of weights.
- VAE tiling (`vae_tiling`, off unless asked): diffusers' spatial tiles (256 pixels every 192, overlaps blended)
  bring the decode to ~1.2 GiB of activations plus the tiles' outputs (~4.5 GiB at 960×960×81), at the price of
  seams: on the random tiny VAE, frames differ from the whole-frame decode by 0.013 on average and up to 0.5 (of
  [-1, 1]); trained weights are more local, but that deviation is unmeasured here, so it is a separate choice.

The weights never change, so leaving the GPU is dropping the GPU copy: nothing is ever copied back. On a CPU
device streaming still runs (the copies are CPU to CPU, which saves nothing) so that tests run the same code;
model offload is a GPU-only measure and does nothing there.

Not combined with FSDP (`--dit_fsdp` shards the same blocks into DTensors) nor with CUDA graphs (mode
"reduce-overhead": a streamed block's weights change address every pass). Compiled blocks (default mode) stream
unchanged: the hooks are left out of the graph, which sees GPU tensors of the same shapes every call.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from engine.models.dit import DiTConfig, MultiTalkDiT
from engine.presets import EngineModels

logger = logging.getLogger(__name__)

# Each tensor starts on a 256-byte boundary of its flat buffer: the alignment fresh CUDA allocations have, which
# cuBLAS kernels and Inductor's generated code assume.
_ALIGN_BYTES = 256


def resident_bytes(module: nn.Module, device: torch.device | str) -> int:
    """Bytes of `module`'s parameters and buffers that are on `device` now (streamed blocks count while loaded)."""
    device = torch.device(device)
    return sum(
        tensor.numel() * tensor.element_size()
        for tensor in _unique_tensors(module)
        if tensor.device.type == device.type and (device.index is None or tensor.device.index == device.index)
    )


def _unique_tensors(module: nn.Module) -> list[torch.Tensor]:
    """Parameters, then buffers, each once (a tied weight is one tensor)."""
    seen: dict[int, torch.Tensor] = {}
    for tensor in (*module.parameters(), *module.buffers()):
        seen.setdefault(id(tensor), tensor)
    return list(seen.values())


class PackedWeights:
    """A module's parameters and buffers laid out in one flat byte buffer on a home device.

    One buffer per module means one copy moves all of its weights (one DMA instead of a few dozen), and pinned
    pages allocated once at about the weights' size (the pinned allocator rounds every allocation up to a power of
    two, which per tensor would waste up to half). `attach(flat)` points the module's tensors into a buffer of the
    same layout elsewhere (a device copy of `home`); `detach()` points them back into `home`. Packing frees the
    module's original storage tensor by tensor, so it never holds two whole copies.
    """

    def __init__(self, module: nn.Module, home_device: torch.device | str, *, pin: bool) -> None:
        self.tensors = _unique_tensors(module)
        self.layout: list[tuple[int, int, torch.dtype, torch.Size]] = []
        offset = 0
        for tensor in self.tensors:
            offset = -(-offset // _ALIGN_BYTES) * _ALIGN_BYTES
            size = tensor.numel() * tensor.element_size()
            self.layout.append((offset, size, tensor.dtype, tensor.shape))
            offset += size
        self.nbytes = offset
        self.home = torch.empty(offset, dtype=torch.uint8, device=home_device, pin_memory=pin)
        self._home_views = self.views(self.home)
        for tensor, view in zip(self.tensors, self._home_views):
            view.copy_(tensor)
            tensor.data = view

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """The module's tensors as views into `flat` (a buffer of this layout)."""
        return [flat[start : start + size].view(dtype).view(shape) for start, size, dtype, shape in self.layout]

    def attach(self, flat: torch.Tensor) -> None:
        for tensor, view in zip(self.tensors, self.views(flat)):
            tensor.data = view

    def detach(self) -> None:
        for tensor, view in zip(self.tensors, self._home_views):
            tensor.data = view

    def is_home(self) -> bool:
        """Whether every tensor is in `home` now (they leave it only while attached elsewhere)."""
        return all(tensor.data_ptr() == view.data_ptr() for tensor, view in zip(self.tensors, self._home_views))


class BlockStreamer:
    """Runs a sequence of blocks with only the first `resident` of them kept on the compute device.

    The others are packed on the home device and fetched for each call; with `evictable`, the resident ones are
    packed too and `evict()` drops their device copies (they come back, prefetched, as they are next called).
    Everything happens in forward hooks on the blocks, so any caller that runs the blocks in order streams them:
    `MultiTalkDiT.run_blocks`, `SequenceParallelDiT` (the same block objects on a token slice), TeaCache (which may
    skip a whole pass; then no hook runs and nothing moves).

    Ordering on CUDA: a copy is issued on a side stream into memory allocated on that stream, an event marks its
    end, and the compute stream waits for that event before the block's kernels. The host enqueues kernels far
    ahead of the GPU, so a streamed block's copy is not dropped when its hook runs: an event on the compute stream
    marks the block's end, and the copy is let go only once that event has passed (`_recycle`), which also keeps
    the host at most two blocks ahead and bounds the copies on the GPU to three. Before a block runs, the next
    packed block not yet on the device is prefetched, unless a streamed block further on is already there.
    """

    def __init__(
        self,
        blocks: Sequence[nn.Module],
        *,
        resident: int,
        device: torch.device | str,
        home_device: torch.device | str = "cpu",
        evictable: bool = False,
        overlap: bool | None = None,
    ) -> None:
        """`overlap`: copy on a side stream, ordered by events (default: on a CUDA device; else copies are
        synchronous)."""
        self.blocks = list(blocks)
        self.device = torch.device(device)
        self.resident = range(min(resident, len(self.blocks)))
        pin = self.device.type == "cuda" and torch.device(home_device).type == "cpu"
        self._packs: dict[int, PackedWeights] = {}
        for index, block in enumerate(self.blocks):
            if evictable or index not in self.resident:
                self._packs[index] = PackedWeights(block, home_device, pin=pin)
            else:
                block.to(self.device)
        overlap = self.device.type == "cuda" if overlap is None else overlap
        self._copy_stream = torch.cuda.Stream(self.device) if overlap else None
        self._loaded: dict[int, torch.Tensor] = {}  # block index -> its weights' flat copy on the device
        self._pending: dict[int, torch.cuda.Event] = {}  # copies issued but not yet waited for by compute
        self._retiring: deque[tuple[torch.Tensor, torch.cuda.Event]] = deque()  # run, maybe still read by the GPU
        self._attached: set[int] = set()
        for index, block in enumerate(self.blocks):
            block.register_forward_pre_hook(torch.compiler.disable(partial(self._before_block, index)))
            if index not in self.resident:
                block.register_forward_hook(torch.compiler.disable(partial(self._after_block, index)))

    @property
    def streamed(self) -> range:
        return range(len(self.resident), len(self.blocks))

    def is_on_device(self, index: int) -> bool:
        """Whether block `index`'s weights are on the compute device now (loaded, or resident and never packed)."""
        return index in self._loaded or index not in self._packs

    @property
    def copies_on_device(self) -> int:
        """Packed blocks' device copies held now: loaded ones, and ones that ran but the GPU may still be reading."""
        return len(self._loaded) + len(self._retiring)

    def pack(self, index: int) -> PackedWeights | None:
        """Block `index`'s home copy, if it has one (streamed blocks, and resident ones when evictable)."""
        return self._packs.get(index)

    def evict(self) -> bool:
        """Drop every device copy of a packed block; True when there was one (the caller may then release memory).

        Waits for the compute stream first (a stage boundary: cheap), so no copy is dropped while a kernel reads it.
        """
        if not self._loaded and not self._retiring:
            return False
        if self._copy_stream is not None:
            torch.cuda.current_stream(self.device).synchronize()
        for index in self._loaded:
            self._packs[index].detach()
        self._loaded.clear()
        self._pending.clear()
        self._retiring.clear()
        self._attached.clear()
        return True

    def _before_block(self, index: int, block: nn.Module, args: Any) -> None:
        if index in self._packs:
            self._fetch(index)
        upcoming = next((j for j in self._packs if j > index and j not in self._loaded), None)
        streamed_ahead = any(j > index and j not in self.resident for j in self._loaded)
        if upcoming is not None and not streamed_ahead:
            self._fetch(upcoming)
        if index in self._packs and index not in self._attached:
            self._attach(index)

    def _after_block(self, index: int, block: nn.Module, args: Any, output: Any) -> None:
        self._packs[index].detach()
        self._attached.discard(index)
        flat = self._loaded.pop(index)
        if self._copy_stream is not None:
            ran = torch.cuda.Event()
            ran.record(torch.cuda.current_stream(self.device))
            self._retiring.append((flat, ran))

    def _recycle(self) -> None:
        """Let go of the copies of blocks that have run, waiting for all but the newest: a copy dropped while the
        compute stream may still read it would be handed to the next copy on the side stream."""
        while self._retiring and (len(self._retiring) > 1 or self._retiring[0][1].query()):
            _, ran = self._retiring.popleft()
            ran.synchronize()

    def _fetch(self, index: int) -> None:
        if index in self._loaded:
            return
        home = self._packs[index].home
        self._recycle()
        # Outside inference mode: the copy outlives the inference region that fetched it (resident blocks keep it).
        with torch.inference_mode(False):
            if self._copy_stream is None:
                self._loaded[index] = home.to(self.device, copy=True)
                return
            with torch.cuda.stream(self._copy_stream):
                flat = torch.empty(home.shape, dtype=home.dtype, device=self.device)
                flat.copy_(home, non_blocking=True)  # pinned source: an asynchronous DMA on the copy stream
                done = torch.cuda.Event()
                done.record(self._copy_stream)
        self._loaded[index] = flat
        self._pending[index] = done

    def _attach(self, index: int) -> None:
        flat = self._loaded[index]
        done = self._pending.pop(index, None)
        if done is not None:
            torch.cuda.current_stream(self.device).wait_event(done)
        self._packs[index].attach(flat)
        self._attached.add(index)


def resident_block_count(dit: MultiTalkDiT, persistent_params: int) -> int:
    """How many leading blocks fit in `persistent_params` parameters after the modules that always stay.

    The reference's rule (spec §8.1) with whole blocks as the unit: modules are persistent while the running
    parameter count stays within the budget; the first block that does not fit and every later one are streamed.
    """
    block_tensors = {id(tensor) for tensor in dit.blocks.parameters()}
    left = persistent_params - sum(p.numel() for p in dit.parameters() if id(p) not in block_tensors)
    count = 0
    for block in dit.blocks:
        size = sum(p.numel() for p in block.parameters())
        if size > left:
            break
        left -= size
        count += 1
    return count


def stream_dit(
    dit: MultiTalkDiT,
    *,
    persistent_params: int | None,
    device: torch.device | str,
    evictable: bool = False,
    home_device: torch.device | str = "cpu",
) -> BlockStreamer:
    """Put the DiT's non-block modules on `device` and stream its blocks within `persistent_params` (None: all
    blocks resident, which only makes sense with `evictable`). Call once per model."""
    if any(isinstance(tensor, DTensor) for tensor in dit.blocks.parameters()):
        raise ValueError("the DiT's blocks are sharded (FSDP): they cannot also be streamed")
    for child in dit.children():
        if child is not dit.blocks:
            child.to(device)
    resident = len(dit.blocks) if persistent_params is None else resident_block_count(dit, persistent_params)
    return BlockStreamer(dit.blocks, resident=resident, device=device, home_device=home_device, evictable=evictable)


class OnCallPlacement:
    """Keeps a module's weights on a home device and brings them, and its tensor arguments, to `device` for the
    length of each forward (then drops the device copy). `before` runs first: the offload policy's "make room"."""

    def __init__(
        self,
        module: nn.Module,
        device: torch.device | str,
        *,
        home_device: torch.device | str = "cpu",
        before: Callable[[], Any] | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.pack = PackedWeights(module, home_device, pin=False)  # once per job or chunk: pageable will do
        self.before = before
        module.register_forward_pre_hook(self._fetch, with_kwargs=True)
        module.register_forward_hook(self._park)

    def _fetch(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if self.before is not None:
            self.before()
        self.pack.attach(self.pack.home.to(self.device, copy=True))

        def moved(value: Any) -> Any:
            return value.to(self.device) if isinstance(value, torch.Tensor) else value

        return tuple(moved(value) for value in args), {name: moved(value) for name, value in kwargs.items()}

    def _park(self, module: nn.Module, args: tuple, output: Any) -> None:
        self.pack.detach()
        _release_cached_memory(self.device)


def _release_cached_memory(device: torch.device) -> None:
    """Return freed blocks to the driver: memory freed on one stream (a model's weights, the copy stream's block
    copies) is otherwise cached for that stream only, and the next stage allocates on another."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def offload_between_stages(
    models: EngineModels,
    streamer: BlockStreamer,
    device: torch.device | str,
    *,
    home_device: torch.device | str = "cpu",
) -> None:
    """`--offload_model`: T5 (unless placed elsewhere) and CLIP on `device` only during their forward; the DiT's
    device copies dropped whenever T5, CLIP or the VAE runs. Call once."""
    device = torch.device(device)

    def make_room(*_: Any) -> None:
        if streamer.evict():
            _release_cached_memory(device)

    if torch.device(models.placement.text_device) == device:  # else T5 runs where it is placed (`--t5_cpu`)
        OnCallPlacement(models.t5, device, home_device=home_device, before=make_room)
    OnCallPlacement(models.clip, device, home_device=home_device, before=make_room)
    models.vae.to(device)
    for coder in (models.vae.autoencoder.encoder, models.vae.autoencoder.decoder):
        coder.conv_in.register_forward_pre_hook(make_room)  # every frame: a no-op once the DiT has left


def apply_low_memory(
    models: EngineModels, *, persistent_params: int | None, offload_models: bool, vae_tiling: bool = False
) -> BlockStreamer | None:
    """Place the loaded models for `--num_persistent_param_in_dit` / `--offload_model` / VAE tiling; the pipeline
    needs nothing else. Models may arrive on the CPU (RenderPipeline.from_preset loads them there when either of the
    first two is on, so that the whole DiT never has to fit on the GPU): VAE, CLIP, T5 and the DiT's kept parts go
    to their placement. Returns the DiT's streamer, None when neither of those applies. Call once per set of
    models; not with FSDP."""
    device = torch.device(models.placement.device)
    offload = offload_models and device.type == "cuda"
    if vae_tiling:
        models.vae.autoencoder.enable_tiling()  # diffusers' defaults: 256-pixel tiles every 192 pixels
    if persistent_params is None and not offload:
        return None
    streamer = stream_dit(models.dit, persistent_params=persistent_params, device=device, evictable=offload)
    if offload:
        offload_between_stages(models, streamer, device)
    else:
        models.vae.to(device)
        models.clip.to(device)
        models.t5.to(models.placement.text_device)
    logger.info(
        "low-memory placement",
        extra={"action": "load_models", "resident_blocks": len(streamer.resident),
               "streamed_blocks": len(streamer.streamed), "offload_models": offload,
               "dit_gib_on_device": round(resident_bytes(models.dit, device) / 2**30, 2)},
    )  # fmt: skip
    return streamer


# ---------------------------------------------------------------------------------------------------------------
# Self-check on a GPU host: python -m engine.offload --selfcheck


def _check_inputs(config: DiTConfig, *, latent_frames: int, latent_side: int, device: torch.device) -> dict:
    generator = torch.Generator(device="cpu").manual_seed(5)
    audio = config.audio
    frames = audio.vae_time_stride * (latent_frames - 1) + 1
    masks = torch.zeros(3, latent_side, latent_side)
    masks[0, :, : latent_side // 2], masks[1, :, latent_side // 2 :] = 1, 1
    masks[0, :, 0], masks[2, :, 0] = 0, 1
    shapes = {
        "latents": (1, 16, latent_frames, latent_side, latent_side),
        "text_states": (1, config.text_len, config.text_dim),
        "image_states": (1, config.image_tokens, config.image_dim),
        "cond_latents": (1, 20, latent_frames, latent_side, latent_side),
        "audio": (2, frames, audio.window, audio.feature_layers, audio.feature_dim),
    }
    inputs = {name: torch.randn(shape, generator=generator).to(device) for name, shape in shapes.items()}
    return inputs | {"timestep": torch.tensor([500.0], device=device), "region_masks": masks.to(device)}


def _timed_forward(dit: MultiTalkDiT, inputs: dict) -> tuple[torch.Tensor, float, int]:
    """Output, seconds and peak allocated bytes (on a CUDA device; else 0) of one forward."""
    on_cuda = inputs["latents"].device.type == "cuda"
    if on_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    with torch.inference_mode():
        out = dit(**inputs)
    if on_cuda:
        torch.cuda.synchronize()
    return out, time.perf_counter() - started, torch.cuda.max_memory_allocated() if on_cuda else 0


def _built_dit(config: DiTConfig, device: torch.device, *, compiled: bool) -> MultiTalkDiT:
    """The same random bf16 weights on every call (seeded, built on the GPU: no fp32 copy on the CPU)."""
    from engine.acceleration import compile_blocks

    torch.manual_seed(0)
    with torch.device(device):
        dit = MultiTalkDiT(config).to(torch.bfloat16).eval().requires_grad_(False)
    return compile_blocks(dit) if compiled else dit


def selfcheck(
    config: DiTConfig, device: torch.device, *, latent_side: int, latent_frames: int, compiled: bool = False
) -> bool:
    """bf16 blocks: the resident DiT against every block streamed (`--num_persistent_param_in_dit 0`) and half of
    them kept but evictable (both options), each run cold, warm and (evictable) after `evict()`. Prints each run;
    True when every output matches and every streamed block's weights are back home after each run."""
    layers = config.num_layers
    dit = _built_dit(config, device, compiled=compiled)
    inputs = _check_inputs(config, latent_frames=latent_frames, latent_side=latent_side, device=device)
    _timed_forward(dit, inputs)  # warm-up: kernels, compilation
    reference, seconds, peak = _timed_forward(dit, inputs)
    block_params = sum(p.numel() for p in dit.blocks[0].parameters())
    always = sum(p.numel() for p in dit.parameters()) - block_params * layers
    print(f"resident: {resident_bytes(dit, device) / 2**30:.2f} GiB of weights on the GPU, {seconds:.3f} s per "
          f"forward, peak {peak / 2**30:.2f} GiB ({layers} blocks of {block_params / 1e9:.2f} B parameters)")
    del dit
    _release_cached_memory(device)
    ok = True
    for name, persistent, evictable in (("all streamed", 0, False),
                                        ("half kept, evictable", always + block_params * (layers // 2), True)):
        dit = _built_dit(config, device, compiled=compiled)
        streamer = stream_dit(dit, persistent_params=persistent, device=device, evictable=evictable)
        _release_cached_memory(device)
        runs = ["cold", "warm"] + (["after evict()"] if evictable else [])
        for run in runs:
            if run == "after evict()":
                streamer.evict()
            out, seconds, peak = _timed_forward(dit, inputs)
            difference = (out.float() - reference.float()).abs().max().item()
            scale = reference.float().abs().max().item()
            at_home = all(streamer.pack(i).is_home() for i in streamer.streamed)
            ok &= difference <= 1e-3 * scale and at_home
            print(f"{name}, {run}: max |diff| {difference:.3g} (output max {scale:.3g}), streamed blocks at home "
                  f"{at_home}, {resident_bytes(dit, device) / 2**30:.2f} GiB of weights on the GPU after, "
                  f"{seconds:.3f} s, peak {peak / 2**30:.2f} GiB, resident blocks {list(streamer.resident)}")
        del dit, streamer
        _release_cached_memory(device)
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description="Check DiT block streaming on this GPU (resident == streamed).")
    parser.add_argument("--selfcheck", action="store_true", required=True)
    parser.add_argument("--layers", type=int, default=4, help="full-width blocks (0.93 GB each in bf16)")
    parser.add_argument("--latent_side", type=int, default=60, help="latent side: 60 = 480 px, 120 = 960 px")
    parser.add_argument("--latent_frames", type=int, default=21, help="21 = 81 video frames")
    parser.add_argument("--compile", action="store_true", help="compile the blocks first (engine.acceleration)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("the self-check needs a CUDA device (the CPU path is covered by tests/engine/test_offload.py)")
    ok = selfcheck(DiTConfig(num_layers=args.layers), torch.device("cuda"), latent_side=args.latent_side,
                   latent_frames=args.latent_frames, compiled=args.compile)  # fmt: skip
    print("OK" if ok else "MISMATCH")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
