"""The umT5-XXL text encoder that embeds the prompt for the DiT's cross-attention (bf16 in the reference).

The network is transformers' `UMT5EncoderModel`, which computes the reference `T5Encoder` (Wan's
`wan/modules/t5.py`) exactly: unscaled attention with a per-layer relative position bias (32 buckets,
bidirectional, max distance 128), RMSNorm eps 1e-6, the gated tanh-GELU FFN, a final RMSNorm and no
biases anywhere. tests/engine/test_t5_parity.py holds it to the reference's own outputs.

Prompts are cleaned and tokenized as the reference does (`clean_prompt`, `tokenize_prompts`).

No file I/O here: engine/weights.py reads `models_t5_umt5-xxl-enc-bf16.pth` and the tokenizer folder.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Any

import ftfy
import torch
from torch import nn
from transformers import UMT5Config, UMT5EncoderModel


@dataclass(frozen=True)
class T5Config:
    """Shape of the text encoder; the defaults are umT5-XXL's encoder."""

    vocab_size: int = 256384
    dim: int = 4096
    ffn_dim: int = 10240
    num_heads: int = 64
    num_layers: int = 24
    num_buckets: int = 32
    max_distance: int = 128
    norm_eps: float = 1e-6
    text_len: int = 512  # the tokenizer pads / truncates every prompt to this many tokens

    @classmethod
    def tiny(cls) -> T5Config:
        return cls(vocab_size=64, dim=32, ffn_dim=48, num_heads=4, num_layers=2, text_len=16)

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


def clean_prompt(text: str) -> str:
    """The reference's "whitespace" cleaning: ftfy repair (which also straightens curly quotes), HTML entities
    unescaped twice, whitespace runs collapsed to one space. It changes tokens, so it is part of the numerics."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip()


def tokenize_prompts(tokenizer: Any, prompts: list[str], text_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts -> (ids, mask), each [B, text_len]: cleaned, EOS appended, truncated and padded to text_len."""
    batch = tokenizer(
        [clean_prompt(prompt) for prompt in prompts],
        return_tensors="pt",
        padding="max_length",
        truncation=True,
        max_length=text_len,
        add_special_tokens=True,
    )
    return batch.input_ids, batch.attention_mask


class UMT5TextEncoder(nn.Module):
    """Token ids + attention mask -> the last hidden state, one row per token."""

    def __init__(self, config: T5Config) -> None:
        super().__init__()
        self.config = config
        self.model = UMT5EncoderModel(
            UMT5Config(
                vocab_size=config.vocab_size,
                d_model=config.dim,
                d_kv=config.head_dim,
                d_ff=config.ffn_dim,
                num_layers=config.num_layers,
                num_heads=config.num_heads,
                relative_attention_num_buckets=config.num_buckets,
                relative_attention_max_distance=config.max_distance,
                layer_norm_epsilon=config.norm_eps,
                feed_forward_proj="gated-gelu",  # tanh GELU on the gate branch, as the reference
                dropout_rate=0.0,
                # The reference's order in bf16: bias added to the raw scores, softmax in fp32, probabilities
                # rounded to bf16 before the value product. Two prompts once per job: speed does not matter.
                attn_implementation="eager",
            )
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, L] ids, [B, L] 1/0 mask -> [B, L, dim]; rows of padding tokens are computed but meaningless."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        """Per prompt, only the rows of its real tokens ([L_i, dim]), as the reference returns them."""
        hidden = self(input_ids, attention_mask)
        lengths = attention_mask.gt(0).sum(dim=1).tolist()  # host sync: the slice sizes are Python ints
        return [rows[:length] for rows, length in zip(hidden, lengths, strict=True)]
