"""Prompt cleaning and umT5 text encoding, as the LongCat-Video pipeline does it.

The same function feeds the sampling pipeline and the per-shard text caches, so cached embeddings
and embeddings computed at sampling time come from identical tokenisation and cleaning.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass

import ftfy
import torch

from longcat.flow import pad_captions

_WHITESPACE = re.compile(r"\s+")


def prompt_clean(text: str) -> str:
    """Fix broken unicode (ftfy), unescape HTML twice, collapse whitespace: the reference's cleaning."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return _WHITESPACE.sub(" ", text).strip()


@dataclass
class PromptEmbeddings:
    """Text embeddings in both forms the project uses.

    `unpadded[i]` is `[L_i, C]`: the caption's real tokens, end-of-sequence included (what caches store).
    `padded` is `[B, 1, max_tokens, C]` with `mask` `[B, max_tokens]` (what the DiT takes; see
    `longcat.flow.pad_captions`, which the training loader calls on the cached `unpadded` ones).
    """

    unpadded: list[torch.Tensor]
    padded: torch.Tensor
    mask: torch.Tensor


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: Sequence[str], max_tokens: int) -> PromptEmbeddings:
    """Encode captions with umT5: cleaned, padded to `max_tokens`, truncated beyond it, end-of-sequence added.

    The encoder sees the full padded batch with its attention mask (as the reference pipeline does), so a
    caption's embedding does not depend on the other captions in the batch.
    """
    if isinstance(prompts, str):
        raise TypeError("encode_prompts: expected a list of prompts, found a single string")
    cleaned = [prompt_clean(prompt) for prompt in prompts]
    tokens = tokenizer(
        cleaned,
        padding="max_length",
        max_length=max_tokens,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    device = text_encoder.device
    mask = tokens.attention_mask.to(device)
    hidden = text_encoder(tokens.input_ids.to(device), attention_mask=mask).last_hidden_state
    lengths = mask.sum(dim=1).tolist()
    unpadded = [hidden[row, :length].clone() for row, length in enumerate(lengths)]
    padded, padded_mask = pad_captions(unpadded, max_tokens)
    return PromptEmbeddings(unpadded=unpadded, padded=padded, mask=padded_mask)
