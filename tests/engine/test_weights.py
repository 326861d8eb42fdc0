"""Reading checkpoints: sharded safetensors through the index, safe `.pth` reads, and errors that name the problem."""

from __future__ import annotations

import json
import weakref

import pytest
import torch
from safetensors.torch import save_file

from engine.models.clip import CLIPConfig, WanCLIPImageEncoder
from engine.models.dit import DiTConfig, MultiTalkDiT
from engine.models.t5 import T5Config, UMT5TextEncoder
from engine.weights import (
    DIT_INDEX_FILE,
    CheckpointTensors,
    WeightsError,
    check_tensors,
    convert_t5_key,
    load_dit,
    load_t5,
    parameters_on_meta,
    read_pth,
)


@pytest.fixture()
def t5_state(load_fixture) -> dict[str, torch.Tensor]:
    return dict(load_fixture("t5/reference_state_dict"))


def _load_t5(state, tmp_path):
    path = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    torch.save(state, path)
    return load_t5(path, config=T5Config.tiny(), dtype=torch.float32)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(WeightsError, match=r"checkpoint file not found: .*models_t5_umt5-xxl-enc-bf16\.pth"):
        load_t5(tmp_path / "models_t5_umt5-xxl-enc-bf16.pth", config=T5Config.tiny())


def test_truncated_pth_is_named(t5_state, tmp_path):
    path = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    torch.save(t5_state, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(WeightsError, match=r"cannot read .*models_t5_umt5-xxl-enc-bf16\.pth"):
        load_t5(path, config=T5Config.tiny())


class _NotATensor:
    """Pickling this makes a file that only a full (unsafe) unpickler would load."""


def test_pickled_objects_are_never_unpickled(t5_state, tmp_path):
    path = tmp_path / "t5.pth"
    torch.save({**t5_state, "payload": _NotATensor()}, path)
    with pytest.raises(WeightsError, match=r"cannot read .*t5\.pth"):
        load_t5(path, config=T5Config.tiny())


def test_missing_key_is_named(t5_state, tmp_path):
    del t5_state["blocks.1.attn.q.weight"]
    missing = r"keys missing from the checkpoint: model\.encoder\.block\.1\.layer\.0\.SelfAttention\.q\.weight"
    with pytest.raises(WeightsError, match=missing):
        _load_t5(t5_state, tmp_path)


def test_unexpected_key_is_named_with_its_file(t5_state, tmp_path):
    t5_state["blocks.1.attn.extra.weight"] = torch.zeros(2)
    unexpected = r"unexpected keys .*t5_umt5-xxl-enc-bf16\.pth \[blocks\.1\.attn\.extra\.weight\]"
    with pytest.raises(WeightsError, match=unexpected):
        _load_t5(t5_state, tmp_path)


def test_wrong_shape_is_named_with_both_shapes(t5_state, tmp_path):
    t5_state["norm.weight"] = torch.ones(31)
    wrong = r"wrong shape for model\.encoder\.final_layer_norm\.weight .*\[norm\.weight\]: "
    with pytest.raises(WeightsError, match=wrong + r"\[31\] in the checkpoint, \[32\] in the model"):
        _load_t5(t5_state, tmp_path)


def test_weights_error_keeps_paths_out_of_the_user_message(tmp_path):
    with pytest.raises(WeightsError) as caught:
        load_t5(tmp_path / "t5.pth", config=T5Config.tiny())
    assert str(tmp_path) not in caught.value.user_message
    assert str(tmp_path) in caught.value.admin_detail


def test_a_checkpoint_is_checked_without_reading_any_tensor(t5_state, tmp_path, monkeypatch):
    """Keys and shapes come from the headers, so a wrong 65 GB checkpoint fails before any data is read."""

    def unreadable(self, key):
        raise AssertionError(f"{key} was read before the checkpoint was checked")

    good, bad = tmp_path / "good.pth", tmp_path / "bad.pth"
    torch.save(t5_state, good)
    torch.save({**t5_state, "norm.weight": torch.ones(31)}, bad)
    with parameters_on_meta():
        model = UMT5TextEncoder(T5Config.tiny())
    monkeypatch.setattr(CheckpointTensors, "__getitem__", unreadable)
    check_tensors(model, read_pth(good).converted(convert_t5_key), "T5")
    with pytest.raises(WeightsError, match="wrong shape"):
        check_tensors(model, read_pth(bad).converted(convert_t5_key), "T5")


def test_models_are_built_with_meta_parameters_and_real_buffers():
    with parameters_on_meta():
        encoder = WanCLIPImageEncoder(CLIPConfig.tiny())
    assert {p.device.type for p in encoder.parameters()} == {"meta"}
    torch.testing.assert_close(encoder.vision.embeddings.position_ids, torch.arange(257).unsqueeze(0))
    torch.testing.assert_close(encoder.pixel_mean.flatten(), torch.tensor(CLIPConfig.mean))


# --- the DiT folder: Wan shards + multitalk.safetensors behind the MultiTalk index --------------------------


@pytest.fixture(scope="module")
def dit_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {key: value.clone() for key, value in MultiTalkDiT(DiTConfig.tiny()).state_dict().items()}


def _write_dit_folder(folder, state) -> None:
    """Base keys over two shards, MultiTalk's audio keys in their own file, one index over all three."""
    base = sorted(key for key in state if "audio" not in key and "norm_x" not in key)
    files = {
        "diffusion_pytorch_model-00001-of-00002.safetensors": base[: len(base) // 2],
        "diffusion_pytorch_model-00002-of-00002.safetensors": base[len(base) // 2 :],
        "multitalk.safetensors": sorted(set(state) - set(base)),
    }
    weight_map = {}
    for name, keys in files.items():
        save_file({key: state[key].contiguous() for key in keys}, folder / name)
        weight_map.update(dict.fromkeys(keys, name))
    (folder / DIT_INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = DiTConfig.tiny()
    wan_config = {"model_type": "i2v", "dim": config.dim, "num_layers": config.num_layers}
    (folder / "config.json").write_text(json.dumps(wan_config))


def test_dit_loads_through_the_index_from_all_shards(dit_state, tmp_path):
    _write_dit_folder(tmp_path, dit_state)
    model = load_dit(tmp_path, config=DiTConfig.tiny(), dtype=torch.float32)
    loaded = model.state_dict()
    assert loaded.keys() == dit_state.keys()
    for key, value in dit_state.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)
    assert any(key.startswith("audio_proj.") for key in loaded)


def test_dit_is_bf16_by_default(dit_state, tmp_path):
    _write_dit_folder(tmp_path, dit_state)
    model = load_dit(tmp_path, config=DiTConfig.tiny())
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_dit_fp32_shards_are_cast_one_tensor_at_a_time(dit_state, tmp_path, monkeypatch):
    """No fp32 copy of the model builds up in host memory: each tensor is read once, and is gone (cast into the
    bf16 model) before the next one is read. Checking the index and the shapes reads no tensor at all."""
    _write_dit_folder(tmp_path, dit_state)
    read = CheckpointTensors.__getitem__
    alive: list[weakref.ref] = []

    def read_one(self, key):
        assert all(ref() is None for ref in alive), f"an fp32 tensor was still alive when {key} was read"
        tensor = read(self, key)
        alive.append(weakref.ref(tensor))
        return tensor

    monkeypatch.setattr(CheckpointTensors, "__getitem__", read_one)
    model = load_dit(tmp_path, config=DiTConfig.tiny(), dtype=torch.bfloat16)
    assert len(alive) == len(dit_state)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_dit_shard_named_by_the_index_but_absent_is_named(dit_state, tmp_path):
    _write_dit_folder(tmp_path, dit_state)
    (tmp_path / "multitalk.safetensors").unlink()
    with pytest.raises(WeightsError, match=r"checkpoint file not found: .*multitalk\.safetensors"):
        load_dit(tmp_path, config=DiTConfig.tiny())


def test_truncated_dit_shard_is_named(dit_state, tmp_path):
    _write_dit_folder(tmp_path, dit_state)
    shard = tmp_path / "multitalk.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(WeightsError, match=r"cannot read .*multitalk\.safetensors"):
        load_dit(tmp_path, config=DiTConfig.tiny())


def test_dit_index_that_misplaces_a_key_is_named(dit_state, tmp_path):
    _write_dit_folder(tmp_path, dit_state)
    index = json.loads((tmp_path / DIT_INDEX_FILE).read_text())
    index["weight_map"]["audio_proj.norm.weight"] = "diffusion_pytorch_model-00001-of-00002.safetensors"
    (tmp_path / DIT_INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(WeightsError, match=r"maps audio_proj\.norm\.weight to diffusion_pytorch_model-00001-of-00002"):
        load_dit(tmp_path, config=DiTConfig.tiny())


def test_wan_index_not_replaced_by_multitalks_is_refused_with_the_fix(dit_state, tmp_path):
    base_only = {key: value for key, value in dit_state.items() if "audio" not in key and "norm_x" not in key}
    _write_dit_folder(tmp_path, base_only)
    with pytest.raises(WeightsError, match=r"lists no MultiTalk weights .*replace it with MeiGen-MultiTalk's index"):
        load_dit(tmp_path, config=DiTConfig.tiny())


def test_dit_key_missing_from_the_shards_is_named(dit_state, tmp_path):
    _write_dit_folder(tmp_path, {key: value for key, value in dit_state.items() if key != "blocks.1.norm_x.weight"})
    with pytest.raises(WeightsError, match=r"keys missing from the checkpoint: blocks\.1\.norm_x\.weight"):
        load_dit(tmp_path, config=DiTConfig.tiny())


def test_dit_folder_for_another_network_is_refused(dit_state, tmp_path):
    _write_dit_folder(tmp_path, dit_state)
    (tmp_path / "config.json").write_text(json.dumps({"dim": 5120, "num_layers": 40}))
    with pytest.raises(WeightsError, match=r"config\.json: dim is 5120, the DiT config has 64"):
        load_dit(tmp_path, config=DiTConfig.tiny())
