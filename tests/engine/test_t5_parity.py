"""UMT5TextEncoder (transformers' UMT5EncoderModel) against the reference umT5 T5Encoder, fp32.

Fixtures: fixtures/t5/README.md. The reference state dict goes through `load_t5` as a `.pth` file.
"""

from __future__ import annotations

import pytest
import torch

from engine.models.t5 import T5Config, UMT5TextEncoder, clean_prompt, tokenize_prompts
from engine.weights import T5_TOKENIZER_DIR, WeightsError, load_t5, load_t5_tokenizer

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


@torch.no_grad()
def test_default_bf16_encoder_reproduces_the_reference_bf16_run_bit_for_bit(load_fixture, reference, tmp_path):
    """The reference casts T5 to bf16; with the same operation order (eager attention) every bit agrees on CPU."""
    path = tmp_path / "t5.pth"
    torch.save(load_fixture("t5/reference_state_dict"), path)
    encoder = load_t5(path, config=T5Config.tiny())
    assert {p.dtype for p in encoder.parameters()} == {torch.bfloat16}
    hidden = encoder(reference["input_ids"], reference["attention_mask"])
    torch.testing.assert_close(hidden[0], reference["hidden_bf16"][0], rtol=0, atol=0)
    torch.testing.assert_close(hidden[1, :23], reference["hidden_bf16"][1, :23], rtol=0, atol=0)


def test_tokenizer_folder_that_is_missing_is_named(tmp_path):
    with pytest.raises(WeightsError, match="tokenizer folder not found: .*google/umt5-xxl"):
        load_t5_tokenizer(tmp_path / T5_TOKENIZER_DIR)


@pytest.fixture()
def tokenizer_folder(tmp_path):
    """A word-level stand-in for umT5's tokenizer with the same special-token behaviour (EOS appended, pad 0)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "two": 3, "people": 4, "talk": 5, "&": 6, '"': 7}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    folder = tmp_path / T5_TOKENIZER_DIR
    wrapped.save_pretrained(folder)
    return folder


def test_prompts_are_cleaned_then_padded_with_eos_from_the_local_tokenizer(tokenizer_folder):
    tokenizer = load_t5_tokenizer(tokenizer_folder)
    ids, mask = tokenize_prompts(tokenizer, ["two \u201cpeople\u201d  &amp;amp;\n talk", "talk " * 20], text_len=8)
    assert ids.tolist() == [[3, 7, 4, 7, 6, 5, 1, 0], [5, 5, 5, 5, 5, 5, 5, 1]]
    assert mask.tolist() == [[1, 1, 1, 1, 1, 1, 1, 0], [1] * 8]


def test_prompt_cleaning_repairs_mojibake_and_entities_like_the_reference():
    assert clean_prompt("  caf\u00c3\u00a9 \u201cdialogue\u201d &amp;amp;lt;\t ok ") == 'caf\u00e9 "dialogue" < ok'
