"""UMT5TextEncoder (transformers' UMT5EncoderModel) against the reference umT5 T5Encoder, fp32.

Fixtures: fixtures/t5/README.md. The reference state dict goes through `load_t5` as a `.pth` file.
"""

from __future__ import annotations

import pytest
import torch

from engine.models.t5 import T5Config, UMT5TextEncoder
from engine.weights import WeightsError, load_t5, load_t5_tokenizer

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def reference(load_fixture):
    return load_fixture("t5/io")


@pytest.fixture(scope="module")
def encoder(load_fixture, tmp_path_factory) -> UMT5TextEncoder:
    path = tmp_path_factory.mktemp("t5") / "models_t5_umt5-xxl-enc-bf16.pth"
    torch.save(load_fixture("t5/reference_state_dict"), path)
    return load_t5(path, config=T5Config.tiny(), dtype=torch.float32)


@torch.no_grad()
def test_encoder_matches_reference_with_and_without_padding(encoder, reference, relative_error):
    hidden = encoder(reference["input_ids"], reference["attention_mask"])
    assert hidden.shape == (2, 40, 32)
    assert relative_error(hidden[0], reference["hidden"][0]) <= TOLERANCE
    assert relative_error(hidden[1, :23], reference["hidden"][1, :23]) <= TOLERANCE


@torch.no_grad()
def test_encode_keeps_only_the_real_tokens(encoder, reference):
    rows = encoder.encode(reference["input_ids"], reference["attention_mask"])
    assert [tuple(r.shape) for r in rows] == [(40, 32), (23, 32)]


@torch.no_grad()
def test_padding_tokens_do_not_change_the_real_ones(encoder, reference):
    ids, mask = reference["input_ids"][1:], reference["attention_mask"][1:]
    other_padding = ids.clone()
    other_padding[:, 23:] = 7
    torch.testing.assert_close(encoder(ids, mask)[:, :23], encoder(other_padding, mask)[:, :23])


def test_token_embedding_is_shared_with_the_encoder_stack_after_loading(encoder):
    assert encoder.model.encoder.embed_tokens.weight is encoder.model.shared.weight


def test_default_precision_is_bf16_as_the_reference(load_fixture, tmp_path):
    path = tmp_path / "t5.pth"
    torch.save(load_fixture("t5/reference_state_dict"), path)
    encoder = load_t5(path, config=T5Config.tiny())
    assert {p.dtype for p in encoder.parameters()} == {torch.bfloat16}


def test_tokenizer_comes_only_from_a_local_folder(tmp_path):
    with pytest.raises(WeightsError, match="tokenizer folder not found: .*google/umt5-xxl"):
        load_t5_tokenizer(tmp_path / "google/umt5-xxl")
