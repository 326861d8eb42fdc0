"""Engine presets: which models the render pipeline runs, at what size and precision, and loading them.

Three presets, all made of the production classes:

- `full` loads the published checkpoints from the original service's `weights/` layout (weights/README.md):
  the MultiTalk DiT (Wan2.1-I2V-14B shards + `multitalk.safetensors`, bf16), the Wan VAE (fp32), umT5-XXL
  (bf16) with its tokenizer, the CLIP ViT-H/14 image tower (fp16) and chinese-wav2vec2-base (fp32), and
  renders at the model's size buckets (spec §1.3).
- `tiny` builds each model's `tiny()` configuration with seeded random weights, a character-level tokenizer
  and the same chunking (81 frames, 25 motion frames), at a tenth of the bucket size rounded to the DiT's
  16-pixel grid. It needs no files, runs on the CPU in seconds, and renders noise: it is for tests and for
  trying the whole path without weights.
- `full-random` is `full` with seeded random weights and no files: the production shapes, precisions and sizes, for
  benchmarking the whole pipeline on a GPU without the checkpoints (engine/bench_clip.py). Every model is built
  where it runs, in its own dtype, so the 14 B DiT and the 5.7 B umT5 never exist in fp32 or on the CPU. The text
  encoder reads `tiny`'s character tokenizer (umT5's tokenizer is a file): one token per character, several times
  umT5's count, so its T5 time (T5 runs a prompt's real tokens) is an upper bound; the DiT pads the states to the
  text length whatever their count. Its video is noise.

Speech (Kokoro) is loaded by `engine.stages.speech.load_tts`; LoRA files are merged here, at load time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, Wav2Vec2FeatureExtractor

from engine.lora import load_loras
from engine.models.clip import CLIPConfig, WanCLIPImageEncoder
from engine.models.dit import DiTConfig, MultiTalkDiT
from engine.models.t5 import T5Config, UMT5TextEncoder
from engine.models.vae import VAEConfig, WanVAE
from engine.models.wav2vec import SAMPLE_RATE, Wav2VecAudioEncoder, Wav2VecConfig
from engine.stages.conditioning import PromptCache
from engine.streaming import FRAMES_PER_CHUNK, MOTION_FRAMES
from engine.weights import (
    CLIP_FILE,
    DIT_INDEX_FILE,
    T5_FILE,
    T5_TOKENIZER_DIR,
    VAE_FILE,
    WeightsError,
    load_clip,
    load_dit,
    load_t5,
    load_t5_tokenizer,
    load_vae,
    load_wav2vec,
    load_wav2vec_preprocessor,
)
from storage.buckets import choose_bucket

logger = logging.getLogger(__name__)

WAN_DIR = "Wan2.1-I2V-14B-480P"  # used for both buckets: MultiTalk has no separate 720p weights
WAV2VEC_DIR = "chinese-wav2vec2-base"
MULTITALK_FILE = "multitalk.safetensors"

# Frame sides must be whole DiT tokens: 8 px per latent (VAE) x 2 latents per token (patch).
PIXELS_PER_TOKEN = 16


def bucket_size(quality: str, height: int, width: int) -> tuple[int, int]:
    """The (height, width) bucket of `quality` whose h/w key is nearest the frame's (ties: first listed)."""
    bucket = choose_bucket(quality, height / width)
    return bucket.height, bucket.width


@dataclass(frozen=True)
class Preset:
    """What the render pipeline runs: model shapes, precisions, chunking and output size."""

    name: str
    dit: DiTConfig
    vae: VAEConfig
    t5: T5Config
    clip: CLIPConfig
    wav2vec: Wav2VecConfig
    dit_dtype: torch.dtype
    t5_dtype: torch.dtype
    clip_dtype: torch.dtype
    vae_dtype: torch.dtype = torch.float32
    wav2vec_dtype: torch.dtype = torch.float32
    frame_num: int = FRAMES_PER_CHUNK
    motion_frames: int = MOTION_FRAMES
    size_divisor: int = 1  # output sides = bucket sides / size_divisor, on the 16-pixel grid
    needs_weights: bool = True

    def frame_size(self, quality: str, height: int, width: int) -> tuple[int, int]:
        """Output (height, width) for a reference frame of `height` x `width` pixels."""
        bucket = bucket_size(quality, height, width)
        if self.size_divisor == 1:
            return bucket
        return tuple(  # type: ignore[return-value]
            max(2, round(side / self.size_divisor / PIXELS_PER_TOKEN)) * PIXELS_PER_TOKEN for side in bucket
        )


FULL = Preset(
    name="full", dit=DiTConfig(), vae=VAEConfig(), t5=T5Config(), clip=CLIPConfig(), wav2vec=Wav2VecConfig(),
    dit_dtype=torch.bfloat16, t5_dtype=torch.bfloat16, clip_dtype=torch.float16,
)  # fmt: skip
PRESETS: dict[str, Preset] = {
    "full": FULL,
    "full-random": replace(FULL, name="full-random", needs_weights=False),
    "tiny": Preset(
        name="tiny", dit=DiTConfig.tiny(), vae=VAEConfig.tiny(), t5=T5Config.tiny(), clip=CLIPConfig.tiny(),
        wav2vec=Wav2VecConfig.tiny(), dit_dtype=torch.float32, t5_dtype=torch.float32, clip_dtype=torch.float32,
        size_divisor=10, needs_weights=False,
    ),
}  # fmt: skip


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}") from None


@dataclass(frozen=True)
class LoraFile:
    """A LoRA merged into the DiT at load; jobs name it by `name` (the file stem unless given)."""

    path: Path
    scale: float = 1.0
    name: str = ""

    @property
    def key(self) -> str:
        return self.name or self.path.stem


@dataclass(frozen=True)
class Placement:
    """Where each model lives. The reference runs wav2vec2 on the CPU (fp32); T5 may stay on the CPU to save memory."""

    device: str = "cpu"
    t5_device: str | None = None  # None: `device`
    wav2vec_device: str = "cpu"

    @property
    def text_device(self) -> str:
        return self.t5_device or self.device


@dataclass
class EngineModels:
    """Every network the render stages use, loaded once per engine process."""

    preset: Preset
    placement: Placement
    dit: MultiTalkDiT
    vae: WanVAE
    t5: UMT5TextEncoder
    tokenizer: Any  # a transformers tokenizer: tokenize_prompts' contract
    clip: WanCLIPImageEncoder
    wav2vec: Wav2VecAudioEncoder
    wav2vec_preprocessor: Wav2Vec2FeatureExtractor
    loras: tuple[LoraFile, ...] = field(default=())
    prompt_cache: PromptCache = field(default_factory=PromptCache)  # umT5 states of recent prompts


def required_files(weights_dir: str | Path) -> list[Path]:
    """The files and folders the `full` preset reads (besides the shards its index names, checked at load)."""
    weights_dir = Path(weights_dir)
    wan, wav2vec = weights_dir / WAN_DIR, weights_dir / WAV2VEC_DIR
    return [
        wan / DIT_INDEX_FILE, wan / MULTITALK_FILE, wan / VAE_FILE, wan / T5_FILE, wan / CLIP_FILE,
        wan / T5_TOKENIZER_DIR, wav2vec / "config.json", wav2vec / "preprocessor_config.json",
    ]  # fmt: skip


def missing_files(weights_dir: str | Path) -> list[Path]:
    """What `required_files` lists but the disk lacks, plus the wav2vec2 weights (either of its two file names)."""
    missing = [path for path in required_files(weights_dir) if not path.exists()]
    wav2vec = Path(weights_dir) / WAV2VEC_DIR
    if not (wav2vec / "model.safetensors").is_file() and not (wav2vec / "pytorch_model.bin").is_file():
        missing.append(wav2vec / "model.safetensors")
    return missing


def load_models(
    preset: Preset | str,
    weights_dir: str | Path | None = None,
    *,
    placement: Placement = Placement(),
    loras: Sequence[LoraFile] = (),
    seed: int = 0,
) -> EngineModels:
    """Load (full) or build (tiny, full-random: random weights from `seed`) the preset's models onto their devices."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    started = time.perf_counter()
    if preset.needs_weights:
        if weights_dir is None:
            raise WeightsError(f"the {preset.name} preset needs a weights directory")
        models = _load_checkpoints(preset, Path(weights_dir), placement)
    else:
        models = _build_random(preset, placement, seed)
    if loras:
        load_loras(models.dit, [lora.path for lora in loras], [lora.scale for lora in loras])
        models.loras = tuple(loras)
    logger.info(
        "engine models ready",
        extra={"action": "load_models", "preset": preset.name, "seconds": round(time.perf_counter() - started, 1),
               "device": placement.device, "loras": [lora.key for lora in loras]},
    )  # fmt: skip
    return models


def _load_checkpoints(preset: Preset, weights_dir: Path, placement: Placement) -> EngineModels:
    missing = missing_files(weights_dir)
    if missing:
        raise WeightsError("missing weight files: " + ", ".join(str(path) for path in missing))
    wan, wav2vec = weights_dir / WAN_DIR, weights_dir / WAV2VEC_DIR
    device = placement.device
    return EngineModels(
        preset=preset,
        placement=placement,
        dit=load_dit(wan, device=device, dtype=preset.dit_dtype, config=preset.dit),
        vae=load_vae(wan / VAE_FILE, device=device, dtype=preset.vae_dtype, config=preset.vae),
        t5=load_t5(wan / T5_FILE, device=placement.text_device, dtype=preset.t5_dtype, config=preset.t5),
        tokenizer=load_t5_tokenizer(wan / T5_TOKENIZER_DIR),
        clip=load_clip(wan / CLIP_FILE, device=device, dtype=preset.clip_dtype, config=preset.clip),
        wav2vec=load_wav2vec(wav2vec, device=placement.wav2vec_device, dtype=preset.wav2vec_dtype),
        wav2vec_preprocessor=load_wav2vec_preprocessor(wav2vec),
    )


@contextmanager
def built_on(device: torch.device | str, dtype: torch.dtype) -> Iterator[None]:
    """Modules constructed inside have their parameters created on `device`, floating ones in `dtype`, and
    initialised there: a full-size model never exists in fp32 or on the CPU first. On "meta" nothing is allocated.

    Through the default dtype, so tensors a constructor makes without a dtype of its own (parameters, and buffers
    such as CLIP's pixel statistics, which `.to(dtype)` would convert anyway) take `dtype`; explicit ones keep theirs.
    """
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def _build_random(preset: Preset, placement: Placement, seed: int) -> EngineModels:
    """The preset's classes with their default initialisation, each built on its device in its dtype (`built_on`),
    seeded without touching the global RNGs (the CPU's and every GPU's). A module placed on the CPU beside a GPU
    (umT5 with `--t5_cpu`) is made on the GPU and moved: a CPU takes minutes to initialise 5.7 B parameters."""
    on_gpu = torch.device(placement.device).type == "cuda"

    def build(factory: Callable[[], torch.nn.Module], device: str, dtype: torch.dtype) -> Any:
        with built_on(placement.device if on_gpu and torch.device(device).type == "cpu" else device, dtype):
            module = factory()
        # `to` also moves what a constructor made outside the device context (wav2vec2's masked_spec_embed).
        return module.to(device=device, dtype=dtype).eval().requires_grad_(False)

    with _seeded(seed, placement):
        return EngineModels(
            preset=preset,
            placement=placement,
            dit=build(lambda: MultiTalkDiT(preset.dit), placement.device, preset.dit_dtype),
            vae=build(lambda: WanVAE(preset.vae), placement.device, preset.vae_dtype),
            t5=build(lambda: UMT5TextEncoder(preset.t5), placement.text_device, preset.t5_dtype),
            tokenizer=character_tokenizer(preset.t5.vocab_size),
            clip=build(lambda: WanCLIPImageEncoder(preset.clip), placement.device, preset.clip_dtype),
            wav2vec=build(lambda: Wav2VecAudioEncoder(preset.wav2vec), placement.wav2vec_device,
                          preset.wav2vec_dtype),
            # chinese-wav2vec2-base's preprocessing: the whole utterance standardised, no attention mask.
            wav2vec_preprocessor=Wav2Vec2FeatureExtractor(
                feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0, do_normalize=True,
                return_attention_mask=False,
            ),
        )  # fmt: skip


@contextmanager
def _seeded(seed: int, placement: Placement) -> Iterator[None]:
    """The CPU's and the placement's GPUs' generators seeded inside, restored after (other GPUs left untouched)."""
    devices = {torch.device(name) for name in (placement.device, placement.text_device, placement.wav2vec_device)}
    gpus = sorted({torch.cuda.current_device() if device.index is None else device.index
                   for device in devices if device.type == "cuda"})  # fmt: skip
    with torch.random.fork_rng(devices=gpus):
        torch.default_generator.manual_seed(seed)
        for index in gpus:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


_TINY_SYMBOLS = "abcdefghijklmnopqrstuvwxyz0123456789 .,!?'-"


def character_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A lower-case character tokenizer with umT5's special ids (pad 0, eos 1, unk 2) for the tiny text encoder.

    A real `tokenizers` pipeline, so `tokenize_prompts` pads, truncates and appends EOS exactly as it does with
    the umT5 tokenizer; characters outside the small alphabet become <unk>.
    """
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for symbol in _TINY_SYMBOLS:
        vocab[symbol] = len(vocab)
    if len(vocab) > vocab_size:
        raise ValueError(f"the character vocabulary needs {len(vocab)} ids, the text encoder has {vocab_size}")
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
