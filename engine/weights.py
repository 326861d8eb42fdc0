"""Reading checkpoint files and turning them into loaded engine models.

Owns every file read of model weights and every mapping from the original checkpoint layouts
(`Wan2.1_VAE.pth`, `models_t5_umt5-xxl-enc-bf16.pth`, the open-clip `.pth`, the chinese-wav2vec2-base
HF folder, the DiT's sharded safetensors) to the engine's modules. Models never open files.

Contracts:
- Local paths only; nothing is fetched from a hub.
- `.pth` files are read with `weights_only=True` (no pickled code runs) and memory-mapped; safetensors
  are opened lazily. Tensors are read, cast and moved one at a time into a model built with its
  parameters on the meta device, so host memory never holds an fp32 copy of a whole model.
- A missing file, missing key, unexpected key or wrong shape raises `WeightsError` naming it, before any
  tensor is read.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import AutoTokenizer, Wav2Vec2FeatureExtractor

from engine.models.clip import CLIPConfig, WanCLIPImageEncoder
from engine.models.dit import DiTConfig, MultiTalkDiT
from engine.models.t5 import T5Config, UMT5TextEncoder
from engine.models.vae import VAEConfig, WanVAE
from engine.models.wav2vec import Wav2VecAudioEncoder, Wav2VecConfig
from storage.errors import DuetError

# The files of the Wan2.1-I2V-14B-480P folder (spec §4.2), for callers that resolve them in `--ckpt_dir`.
VAE_FILE = "Wan2.1_VAE.pth"
T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
CLIP_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
T5_TOKENIZER_DIR = "google/umt5-xxl"
DIT_INDEX_FILE = "diffusion_pytorch_model.safetensors.index.json"
# Fields of the Wan folder's config.json that DiTConfig also has (same names) and must agree with.
_DIT_CONFIG_FIELDS = ("dim", "ffn_dim", "freq_dim", "in_dim", "out_dim", "num_heads", "num_layers", "text_len", "eps")

_SHOWN_KEYS = 5  # how many offending keys an error lists before "... and N more"


class WeightsError(DuetError):
    """A checkpoint is missing, unreadable or does not fit its model; the detail names file and key."""

    def __init__(self, detail: str) -> None:
        super().__init__("The render engine's model weights are missing or damaged.", detail)

    def __str__(self) -> str:
        # Raised at engine start-up where the operator reads the traceback: show what is wrong.
        return self.admin_detail


# ---------------------------------------------------------------------------------------------------
# Lazily read tensors
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TensorRef:
    """Where one target tensor comes from: a key of one file, optionally one of `parts` equal dim-0 chunks."""

    file: Path
    key: str
    part: int = 0
    parts: int = 1
    reshape: tuple[int, ...] | None = None


class CheckpointTensors(Mapping[str, torch.Tensor]):
    """Tensors of one or more checkpoint files by (target) key; each read only when asked for."""

    def __init__(self, refs: dict[str, _TensorRef], readers: dict[Path, Any]) -> None:
        self._refs = refs
        self._readers = readers  # a mmapped dict of a .pth, or an open safetensors handle

    @classmethod
    def of_state_dict(cls, state: dict[str, torch.Tensor], file: Path) -> CheckpointTensors:
        """An already opened (e.g. memory-mapped) state dict that came from `file`."""
        return cls({key: _TensorRef(file, key) for key in state}, {file: state})

    def __getitem__(self, key: str) -> torch.Tensor:
        ref = self._refs[key]
        reader = self._readers[ref.file]
        tensor = reader[ref.key] if isinstance(reader, dict) else reader.get_tensor(ref.key)
        if ref.parts > 1:
            tensor = tensor.chunk(ref.parts, dim=0)[ref.part]
        return tensor.reshape(ref.reshape) if ref.reshape is not None else tensor

    def __contains__(self, key: object) -> bool:
        return key in self._refs  # Mapping's default would read the tensor to find out

    def __iter__(self) -> Iterator[str]:
        return iter(self._refs)

    def __len__(self) -> int:
        return len(self._refs)

    def shape(self, key: str) -> tuple[int, ...]:
        """The shape without reading the data."""
        ref = self._refs[key]
        reader = self._readers[ref.file]
        shape = list(reader[ref.key].shape if isinstance(reader, dict) else reader.get_slice(ref.key).get_shape())
        shape[0] //= ref.parts
        if ref.reshape is not None and math.prod(ref.reshape) == math.prod(shape):
            return ref.reshape
        return tuple(shape)  # a size that cannot be reshaped shows as the wrong shape it is

    def file(self, key: str) -> Path:
        """The file a target key is read from."""
        return self._refs[key].file

    def source(self, key: str) -> str:
        """The file and original key a target key is read from, for error messages."""
        return f"{self.file(key)} [{self._refs[key].key}]"

    def converted(self, convert: Callable[[str], list[str] | str | None]) -> CheckpointTensors:
        """Renames keys: `convert(original)` gives the new key, None to drop it, or N keys to split it in N."""
        refs: dict[str, _TensorRef] = {}
        for key, ref in self._refs.items():
            target = convert(key)
            if target is None:
                continue
            targets = [target] if isinstance(target, str) else target
            for part, name in enumerate(targets):
                refs[name] = _TensorRef(ref.file, ref.key, part, len(targets))
        return CheckpointTensors(refs, self._readers)

    def reshaped(self, shapes: dict[str, tuple[int, ...]]) -> CheckpointTensors:
        """Views the given keys with another shape of the same size (e.g. without leading singleton dims)."""
        refs = {key: replace(ref, reshape=shapes[key]) if key in shapes else ref for key, ref in self._refs.items()}
        return CheckpointTensors(refs, self._readers)


def read_pth(path: str | Path) -> CheckpointTensors:
    """A torch pickle of a flat state dict, memory-mapped, without executing pickled code."""
    path = _existing_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError ... for a bad file
        raise WeightsError(f"cannot read {path}: {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a flat state dict of tensors")
    return CheckpointTensors.of_state_dict(state, path)


def read_safetensors(paths: list[Path]) -> CheckpointTensors:
    """One or more safetensors files as one lazily read mapping; a key present twice is an error."""
    refs: dict[str, _TensorRef] = {}
    readers: dict[Path, Any] = {}
    for path in paths:
        path = _existing_file(path)
        try:
            handle = safe_open(path, framework="pt", device="cpu")
            keys = list(handle.keys())
        except (SafetensorError, OSError) as exc:
            raise WeightsError(f"cannot read {path}: {exc}") from exc
        readers[path] = handle
        for key in keys:
            if key in refs:
                raise WeightsError(f"key {key} is in both {refs[key].file} and {path}")
            refs[key] = _TensorRef(path, key)
    return CheckpointTensors(refs, readers)


def read_sharded_safetensors(index_path: str | Path) -> CheckpointTensors:
    """The shards named by a `*.safetensors.index.json`, each key checked to be in the shard that the index names.

    This is how the DiT folder is laid out: the base Wan shards plus `multitalk.safetensors`, all listed in
    the MultiTalk index that replaces Wan's own (spec §4.2).
    """
    index_path = _existing_file(index_path)
    try:
        weight_map: dict[str, str] = json.loads(index_path.read_text())["weight_map"]
    except (ValueError, KeyError, TypeError) as exc:
        raise WeightsError(f"{index_path} is not a safetensors index (no weight_map): {exc}") from exc
    shards = sorted({index_path.parent / name for name in weight_map.values()})
    tensors = read_safetensors(shards)
    for key, shard in weight_map.items():
        if key not in tensors:
            raise WeightsError(f"{index_path} maps {key} to {shard}, which does not contain it")
        if tensors.file(key) != index_path.parent / shard:
            raise WeightsError(f"{index_path} maps {key} to {shard}, but it is in {tensors.file(key)}")
    extra = sorted(set(tensors) - set(weight_map))
    if extra:
        raise WeightsError(f"the shards of {index_path} hold keys its weight_map does not list: {_names(extra)}")
    return tensors


def _existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint file not found: {path}")
    return path


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN_KEYS])
    return shown if len(keys) <= _SHOWN_KEYS else f"{shown} ... and {len(keys) - _SHOWN_KEYS} more"


# ---------------------------------------------------------------------------------------------------
# Building on meta and loading strictly
# ---------------------------------------------------------------------------------------------------


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Builds modules with every parameter on the meta device but real buffers.

    Parameters are moved to meta as they are registered (before any initialisation touches them), so a
    14B model costs nothing to build; buffers computed in constructors (position ids, latent statistics)
    keep their values, which a plain `torch.device("meta")` would lose. It patches `nn.Module` for the
    duration, so build models in one thread (at start-up), not while other threads construct modules.
    """
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def expected_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict without tied aliases (a tied weight is stored once, under its first name)."""
    state = model.state_dict(keep_vars=True)
    aliases = _tied_aliases(state)
    return {name: tensor for name, tensor in state.items() if name not in aliases}


def check_tensors(model: nn.Module, tensors: CheckpointTensors, what: str) -> None:
    """Raises WeightsError unless the checkpoint has exactly the model's keys with the model's shapes."""
    expected = expected_tensors(model)
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise WeightsError(f"{what}: keys missing from the checkpoint: {_names(missing)}")
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        sources = [tensors.source(key) for key in unexpected]
        raise WeightsError(f"{what}: unexpected keys in the checkpoint: {_names(sources)}")
    for name, tensor in expected.items():
        shape = tensors.shape(name)
        if shape != tuple(tensor.shape):
            raise WeightsError(
                f"{what}: wrong shape for {name} from {tensors.source(name)}: "
                f"{list(shape)} in the checkpoint, {list(tensor.shape)} in the model"
            )


def load_tensors(
    model: nn.Module,
    tensors: CheckpointTensors,
    *,
    what: str,
    device: torch.device | str,
    dtype: torch.dtype,
) -> None:
    """Fills a model built under `parameters_on_meta` from the checkpoint, one tensor at a time.

    Floating tensors are cast to `dtype` on their way to `device`; tied aliases are re-pointed at the
    loaded tensor; buffers made by the constructor follow to `device`.
    """
    check_tensors(model, tensors, what)
    aliases = _tied_aliases(model.state_dict(keep_vars=True))
    # One expression per tensor, so that no name keeps the source (e.g. fp32) tensor alive into the next read.
    loaded = {name: _to_target(tensors[name], device, dtype) for name in expected_tensors(model)}
    for alias, first in aliases.items():
        loaded[alias] = loaded[first]
    model.load_state_dict(loaded, strict=True, assign=True)
    for alias, first in aliases.items():  # assign made two Parameters of one tensor: make them one again
        owner, _, leaf = alias.rpartition(".")
        setattr(model.get_submodule(owner), leaf, model.get_parameter(first))
    model.to(device)
    model.eval().requires_grad_(False)


def _to_target(tensor: torch.Tensor, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """Floating tensors to `dtype`, integer ones (none in these checkpoints so far) kept as they are."""
    return tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)


def _tied_aliases(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """Second and later names of one tensor -> its first name."""
    first_by_id: dict[int, str] = {}
    aliases = {}
    for name, tensor in state.items():
        if id(tensor) in first_by_id:
            aliases[name] = first_by_id[id(tensor)]
        else:
            first_by_id[id(tensor)] = name
    return aliases


# ---------------------------------------------------------------------------------------------------
# Key conversion from the original checkpoints
# ---------------------------------------------------------------------------------------------------


def _renamer(rules: list[tuple[str, str]]) -> Callable[[str], str]:
    compiled = [(re.compile(pattern), replacement) for pattern, replacement in rules]

    def rename(key: str) -> str:
        for pattern, replacement in compiled:
            key = pattern.sub(replacement, key)
        return key

    return rename


_VAE_RULES = _renamer(
    [
        (r"^(encoder|decoder)\.conv1\.", r"\1.conv_in."),
        (r"^conv1\.", "quant_conv."),
        (r"^conv2\.", "post_quant_conv."),
        (r"\.middle\.0\.", ".mid_block.resnets.0."),
        (r"\.middle\.1\.", ".mid_block.attentions.0."),
        (r"\.middle\.2\.", ".mid_block.resnets.1."),
        (r"\.head\.0\.", ".norm_out."),
        (r"\.head\.2\.", ".conv_out."),
        (r"^encoder\.downsamples\.", "encoder.down_blocks."),
        (r"\.residual\.0\.", ".norm1."),
        (r"\.residual\.2\.", ".conv1."),
        (r"\.residual\.3\.", ".norm2."),
        (r"\.residual\.6\.", ".conv2."),
        (r"\.shortcut\.", ".conv_shortcut."),
    ]
)


def convert_vae_key(key: str, config: VAEConfig) -> str:
    """`Wan2.1_VAE.pth` key -> `WanVAE` key (diffusers' AutoencoderKLWan under `autoencoder.`).

    The reference keeps the decoder's levels in one flat list (`upsamples.{i}`: per level
    `num_res_blocks + 1` residual blocks then one resample, none after the last level); diffusers nests
    them as `up_blocks.{level}.resnets.{j}` / `.upsamplers.0`.
    """
    match = re.match(r"^decoder\.upsamples\.(\d+)\.(.*)$", key)
    if match:
        per_level = config.num_res_blocks + 2
        level, position = divmod(int(match.group(1)), per_level)
        inner = "upsamplers.0" if position == per_level - 1 else f"resnets.{position}"
        key = f"decoder.up_blocks.{level}.{inner}.{match.group(2)}"
    return "autoencoder." + _VAE_RULES(key)


_T5_RULES = _renamer(
    [
        (r"^token_embedding\.", "shared."),
        (r"^blocks\.(\d+)\.norm1\.", r"encoder.block.\1.layer.0.layer_norm."),
        (r"^blocks\.(\d+)\.attn\.", r"encoder.block.\1.layer.0.SelfAttention."),
        (
            r"^blocks\.(\d+)\.pos_embedding\.embedding\.",
            r"encoder.block.\1.layer.0.SelfAttention.relative_attention_bias.",
        ),
        (r"^blocks\.(\d+)\.norm2\.", r"encoder.block.\1.layer.1.layer_norm."),
        (r"^blocks\.(\d+)\.ffn\.gate\.0\.", r"encoder.block.\1.layer.1.DenseReluDense.wi_0."),
        (r"^blocks\.(\d+)\.ffn\.fc1\.", r"encoder.block.\1.layer.1.DenseReluDense.wi_1."),
        (r"^blocks\.(\d+)\.ffn\.fc2\.", r"encoder.block.\1.layer.1.DenseReluDense.wo."),
        (r"^norm\.", "encoder.final_layer_norm."),
    ]
)


def convert_t5_key(key: str) -> str:
    """umT5 encoder `.pth` key -> `UMT5TextEncoder` key (transformers' UMT5EncoderModel under `model.`).

    The gated FFN is `fc1(x) * gelu_tanh(gate(x))` in the reference and `gelu_new(wi_0(x)) * wi_1(x)` in
    transformers, so `gate` is `wi_0` and `fc1` is `wi_1`.
    """
    return "model." + _T5_RULES(key)


_CLIP_RULES = _renamer(
    [
        (r"^visual\.patch_embedding\.", "embeddings.patch_embedding."),
        (r"^visual\.pos_embedding$", "embeddings.position_embedding.weight"),
        (r"^visual\.cls_embedding$", "embeddings.class_embedding"),
        (r"^visual\.pre_norm\.", "pre_layrnorm."),
        (r"^visual\.post_norm\.", "post_layernorm."),
        (r"^visual\.transformer\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
        (r"^visual\.transformer\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
        (r"^visual\.transformer\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.out_proj."),
        (r"^visual\.transformer\.(\d+)\.mlp\.0\.", r"encoder.layers.\1.mlp.fc1."),
        (r"^visual\.transformer\.(\d+)\.mlp\.2\.", r"encoder.layers.\1.mlp.fc2."),
    ]
)


def convert_clip_key(key: str, config: CLIPConfig) -> list[str] | str | None:
    """open-clip XLM-RoBERTa ViT-H/14 `.pth` key -> `WanCLIPImageEncoder` key, None for what Wan never runs.

    Dropped: the text tower, `log_scale`, the projection `visual.head` and every block from
    `config.num_layers` on (Wan runs the first 31 of 32). The fused `to_qkv` splits into q, k, v (in that
    order along dim 0).
    """
    block = re.match(r"^visual\.transformer\.(\d+)\.(.*)$", key)
    if key.startswith("textual.") or key in ("log_scale", "visual.head"):
        return None
    if block and int(block.group(1)) >= config.num_layers:
        return None
    if block and block.group(2).startswith("attn.to_qkv."):
        suffix = block.group(2).removeprefix("attn.to_qkv.")
        prefix = f"vision.encoder.layers.{block.group(1)}.self_attn"
        return [f"{prefix}.{name}_proj.{suffix}" for name in ("q", "k", "v")]
    return "vision." + _CLIP_RULES(key)


_WAV2VEC_HEADS = ("quantizer.", "project_q.", "project_hid.")


def convert_wav2vec_key(key: str) -> str | None:
    """chinese-wav2vec2-base (saved from `Wav2Vec2ForPreTraining`) key -> `Wav2VecAudioEncoder` key.

    The pre-training heads are dropped, the `wav2vec2.` prefix goes, and the weight-norm halves of the
    positional convolution take the names of torch's parametrisation API.
    """
    if key.startswith(_WAV2VEC_HEADS):
        return None
    key = key.removeprefix("wav2vec2.")
    key = key.replace("pos_conv_embed.conv.weight_g", "pos_conv_embed.conv.parametrizations.weight.original0")
    key = key.replace("pos_conv_embed.conv.weight_v", "pos_conv_embed.conv.parametrizations.weight.original1")
    return "model." + key


# ---------------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------------


def load_dit(
    ckpt_dir: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    config: DiTConfig | None = None,
) -> MultiTalkDiT:
    """The Wan2.1-I2V folder with the MultiTalk index and `multitalk.safetensors` -> MultiTalkDiT.

    The shards are fp32 on disk; each tensor is cast to `dtype` (bf16 as the reference, every tensor) as it
    is read. The folder's `config.json`, when present, must describe the same network as `config`.
    """
    ckpt_dir = Path(ckpt_dir)
    config = config or DiTConfig()
    config_path = ckpt_dir / "config.json"
    if config_path.is_file():
        values = _read_json(config_path)
        for name in _DIT_CONFIG_FIELDS:
            if name in values and values[name] != getattr(config, name):
                ours = getattr(config, name)
                raise WeightsError(f"{config_path}: {name} is {values[name]}, the DiT config has {ours}")
    index_path = ckpt_dir / DIT_INDEX_FILE
    tensors = read_sharded_safetensors(index_path)
    if not any(key.startswith("audio_proj.") for key in tensors):
        raise WeightsError(
            f"{index_path} lists no MultiTalk weights (audio_proj.*): it is still Wan's own index; replace it with "
            "MeiGen-MultiTalk's index and put multitalk.safetensors next to it"
        )
    with parameters_on_meta():
        model = MultiTalkDiT(config)
    load_tensors(model, tensors, what=f"DiT {ckpt_dir}", device=device, dtype=dtype)
    return model


def load_vae(
    path: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    config: VAEConfig | None = None,
) -> WanVAE:
    """`Wan2.1_VAE.pth` -> WanVAE (fp32 as the reference)."""
    config = config or VAEConfig()
    tensors = read_pth(path).converted(lambda key: convert_vae_key(key, config))
    with parameters_on_meta():
        model = WanVAE(config)
    load_tensors(model, tensors, what=f"VAE {path}", device=device, dtype=dtype)
    return model


def load_t5(
    path: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    config: T5Config | None = None,
) -> UMT5TextEncoder:
    """`models_t5_umt5-xxl-enc-bf16.pth` -> UMT5TextEncoder (bf16 as the reference)."""
    tensors = read_pth(path).converted(convert_t5_key)
    with parameters_on_meta():
        model = UMT5TextEncoder(config or T5Config())
    load_tensors(model, tensors, what=f"T5 {path}", device=device, dtype=dtype)
    return model


def load_t5_tokenizer(folder: str | Path) -> Any:
    """The umT5 tokenizer from its local folder (`<ckpt_dir>/google/umt5-xxl`), never from the hub."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsError(f"tokenizer folder not found: {folder}")
    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise WeightsError(f"cannot load the tokenizer in {folder}: {exc}") from exc


def load_clip(
    path: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float16,
    config: CLIPConfig | None = None,
) -> WanCLIPImageEncoder:
    """The open-clip `.pth` (whole CLIP) -> WanCLIPImageEncoder, the vision tower only (fp16 as the reference)."""
    config = config or CLIPConfig()
    embeddings = config.embedding_shapes()  # open-clip keeps them with leading singleton dims
    tensors = read_pth(path).converted(lambda key: convert_clip_key(key, config)).reshaped(embeddings)
    with parameters_on_meta():
        model = WanCLIPImageEncoder(config)
    load_tensors(model, tensors, what=f"CLIP {path}", device=device, dtype=dtype)
    return model


def load_wav2vec(
    folder: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> Wav2VecAudioEncoder:
    """The chinese-wav2vec2-base HF folder (config.json + model.safetensors or pytorch_model.bin) -> encoder."""
    folder = Path(folder)
    config = Wav2VecConfig.from_hf_config(_read_json(folder / "config.json"))
    weights = folder / "model.safetensors"
    tensors = read_safetensors([weights]) if weights.is_file() else read_pth(folder / "pytorch_model.bin")
    with parameters_on_meta():
        model = Wav2VecAudioEncoder(config)
    load_tensors(model, tensors.converted(convert_wav2vec_key), what=f"wav2vec2 {folder}", device=device, dtype=dtype)
    return model


def load_wav2vec_preprocessor(folder: str | Path) -> Any:
    """transformers' Wav2Vec2FeatureExtractor from the folder's preprocessor_config.json (as the reference)."""
    path = _existing_file(Path(folder) / "preprocessor_config.json")
    return Wav2Vec2FeatureExtractor(**_read_json(path))


def _read_json(path: Path) -> dict[str, Any]:
    path = _existing_file(path)
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise WeightsError(f"{path} is not valid JSON: {exc}") from exc
