"""Render stage: MultiTalk denoising over 81-frame chunks chained by motion frames (spec §5, §6).

Owns the chunk loop of the reference's `generate()`: per chunk, the image conditioning of its conditioning frames,
the audio windows, fresh noise, the Euler sampler with the guidance branches (3 passes, or 2 with a text scale of
1), optional APG and TeaCache, then the VAE decode and colour correction whose last frames condition the next
chunk. The numerics live in engine/sampling.py, guidance.py, cache.py and streaming.py; this module only chains
them (tests/engine/test_sampling_parity.py checks the same chaining against the reference with toy networks).
`DiTVelocity` adapts `MultiTalkDiT` to the sampler's `VelocityModel` protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from engine.cache import TeaCache
from engine.guidance import Guidance, GuidanceConfig, VelocityModel, branch_conditions
from engine.models.clip import WanCLIPImageEncoder
from engine.models.dit import MultiTalkDiT
from engine.models.vae import WanVAE
from engine.sampling import CancelCheck, FlowMatchEulerScheduler, initial_noise, make_generator, sample_chunk
from engine.stages.audio import AudioFeatures
from engine.stages.clock import ProgressCallback, StageClock
from engine.stages.conditioning import Conditioning, encode_image_condition
from engine.stages.decode import decode_pieces, to_uint8_frames
from engine.streaming import ChunkPlan, chunk_audio, match_colors, plan_chunks
from storage.contract import Stage

FrameSink = Callable[[torch.Tensor], None]  # uint8 frames [n, H, W, 3] on the CPU, in order


@dataclass(frozen=True)
class RenderConfig:
    """The sampling settings of one job (defaults: the reference CLI's, spec §5.5)."""

    steps: int
    shift: float
    seed: int
    size: str  # size bucket ("480p" / "720p"): picks the TeaCache polynomial, as the reference's --size does
    guidance: GuidanceConfig = GuidanceConfig()
    use_teacache: bool = False
    teacache_threshold: float = 0.2
    color_correction_strength: float = 1.0
    frame_num: int = 81
    motion_frames: int = 25


class DiTVelocity:
    """The sampler's velocity model over `MultiTalkDiT` for one unbatched latent [16, T, h, w].

    With a TeaCache, the transformer blocks of a call may be replaced by the branch's cached residual; the
    indicator is the time-modulation vector (e0), which depends on the timestep alone.
    """

    def __init__(self, dit: MultiTalkDiT, teacache: TeaCache | None = None) -> None:
        self.dit = dit
        self.teacache = teacache

    def __call__(self, latent: torch.Tensor, t: torch.Tensor, /, *, branch: str, **conditioning: Any) -> torch.Tensor:
        tokens, cond = self.dit.embed(latent[None], t, **conditioning)
        if self.teacache is None:
            tokens = self.dit.run_blocks(tokens, cond)
        else:
            tokens = self.teacache.run_blocks(branch, cond.modulation, tokens, lambda x: self.dit.run_blocks(x, cond))
        return self.dit.finish(tokens, cond)[0]


VelocityFactory = Callable[[MultiTalkDiT, TeaCache | None], VelocityModel]


def plan_render(audio: AudioFeatures, config: RenderConfig) -> ChunkPlan:
    """The chunks that cover `audio.num_frames` frames.

    Up to one chunk of video is the reference's clip mode (one chunk, cut to the speech afterwards); its
    streaming mode always renders a second chunk. Longer videos stream until the padded tracks end, never capped
    (the job's length limit is checked before any model runs).
    """
    is_clip = audio.num_frames <= config.frame_num
    plan = plan_chunks(
        audio.rows,
        max_frames=config.frame_num if is_clip else max(audio.rows) + config.frame_num,
        frame_num=config.frame_num,
        motion_frames=config.motion_frames,
    )
    if plan.num_frames < audio.num_frames:
        raise ValueError(f"the audio tracks ({audio.rows} rows) cover {plan.num_frames} < {audio.num_frames} frames")
    return plan


@torch.inference_mode()
def render_video(
    *,
    dit: MultiTalkDiT,
    vae: WanVAE,
    clip: WanCLIPImageEncoder,
    conditioning: Conditioning,
    audio: AudioFeatures,
    config: RenderConfig,
    clock: StageClock,
    on_progress: ProgressCallback,
    is_cancel_requested: CancelCheck | None = None,
    make_velocity: VelocityFactory = DiTVelocity,
    on_frames: FrameSink | None = None,
) -> torch.Tensor:
    """Denoise and decode every chunk -> the video as uint8 frames [audio.num_frames, H, W, 3] on the CPU.

    `on_frames` receives the same frames in order, a few at a time as the VAE decodes them (the MP4 encoder
    compresses them meanwhile). Progress: (RENDER, steps done, steps of all chunks) after every sampler step,
    (ENCODE / DECODE, chunks done, chunks) around them. A cancel request raises `RenderCancelled` before the next
    sampler step.
    """
    plan = plan_render(audio, config)
    device = conditioning.reference.device
    total_steps = len(plan.chunks) * config.steps
    generator = make_generator(config.seed, device)
    scheduler = FlowMatchEulerScheduler(config.steps, config.shift, device)
    teacache = TeaCache(config.size, config.teacache_threshold) if config.use_teacache else None
    model = make_velocity(dit, teacache)
    tracks = [track.to(device) for track in audio.tracks]
    image_condition = conditioning.first_chunk
    motion_frames = conditioning.reference[:, None]  # replaced by each chunk's last decoded frames
    latent_shape = (dit.config.out_dim, *image_condition.cond_latents.shape[-3:])
    pieces: list[torch.Tensor] = []  # uint8 frames on the CPU, cut to the audio's length
    generated = 0  # new frames decoded, before that cut
    for chunk in plan.chunks:
        if chunk.index > 0:
            with clock.measure(Stage.ENCODE):
                image_condition = encode_image_condition(
                    vae, clip, motion_frames, frame_num=config.frame_num, dtype=dit.dtype
                )
            on_progress(Stage.ENCODE, chunk.index + 1, len(plan.chunks))
        cond = {
            "text_states": conditioning.text.prompt,
            "image_states": image_condition.image_states,
            "cond_latents": image_condition.cond_latents,
            "audio": chunk_audio(tracks, chunk, plan),
            "region_masks": conditioning.region_masks,
        }

        def report_step(done: int, _: int, first_step: int = chunk.index * config.steps) -> None:
            on_progress(Stage.RENDER, first_step + done, total_steps)

        with clock.measure(Stage.RENDER):
            if teacache is not None:
                teacache.reset()  # a new chunk starts from new noise: no residual carries over
            latent = sample_chunk(
                model,
                initial_noise(latent_shape, generator),
                scheduler,
                Guidance(config.guidance),  # APG momentum restarts every chunk
                branch_conditions(config.guidance, cond, negative_text=conditioning.text.negative),
                generator=generator,
                motion_latents=image_condition.motion_latents if chunk.index > 0 else None,
                on_step=report_step,
                is_cancel_requested=is_cancel_requested,
            )
        with clock.measure(Stage.DECODE):
            tail: list[torch.Tensor] = []  # the last decoded frames, enough for the next chunk's motion frames
            chunk_frames = 0
            for piece in decode_pieces(vae, latent):
                piece = match_colors(piece, conditioning.reference, config.color_correction_strength)
                new = piece[:, max(0, chunk.new_frames.start - chunk_frames) :]  # past the repeated motion frames
                kept = new[:, : max(0, audio.num_frames - generated)]  # the last chunk runs past the audio's end
                chunk_frames, generated = chunk_frames + piece.shape[1], generated + new.shape[1]
                if kept.shape[1]:
                    pieces.append(to_uint8_frames(kept).cpu())
                    if on_frames is not None:
                        on_frames(pieces[-1])
                tail.append(piece)
                while sum(frames.shape[1] for frames in tail[1:]) >= plan.motion_frames:
                    tail.pop(0)
            motion_frames = torch.cat(tail, dim=1)[:, -plan.motion_frames :]
        on_progress(Stage.DECODE, chunk.index + 1, len(plan.chunks))
    if generated != plan.generated_frames:
        raise RuntimeError(f"rendered {generated} frames, the plan has {plan.generated_frames}")
    return torch.cat(pieces)
