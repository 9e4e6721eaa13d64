"""Captions to umT5 embeddings, as the LongCat-Video pipeline does it, and the text cache jobs.

The same `encode_prompts` feeds the sampling pipeline and the per-shard text caches, so cached
embeddings and embeddings computed at sampling time come from identical tokenisation and cleaning.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import ftfy
import torch
from tqdm import tqdm

from longcat.cache.format import STATUS_FAILED, STATUS_OK, TEXT_INDEX_SCHEMA
from longcat.cache.spec import CacheSettings, cache_key, checked_spec, text_cache_spec
from longcat.cache.writer import FailureLimit, ShardWriter, failure_limit, write_empty_text
from longcat.data.rejects import cache_failure
from longcat.encoders.decode import read_shard_rows
from longcat.encoders.dtypes import compute_dtype, torch_dtype
from longcat.encoders.write_behind import WriteBehind, to_host
from longcat.flow import pad_captions
from longcat.paths import CacheLayout

log = logging.getLogger(__name__)

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


def cache_text_shard(
    rows: list[dict],
    tokenizer,
    text_encoder,
    max_tokens: int,
    writer: ShardWriter,
    store_dtype: torch.dtype,
    limit: FailureLimit,
    batch_size: int = 16,
) -> None:
    """Encode the caption of every row not already done, unpadded [L_i, C], then assemble the shard.

    A batch's embeddings are written by a background thread while the next batch encodes. More failed
    captions than `limit` allows stop the job with CacheError (`ShardWriter.check_failures`).
    """
    todo = [row for row in rows if row["key"] not in writer.done]
    for row in todo:
        if row.get("caption") is None:
            reason = cache_failure("missing_caption", "the shard list holds no caption text for it")
            writer.add({"sample_id": row["key"], "status": STATUS_FAILED, "reason": reason})
    captioned = [row for row in todo if row.get("caption") is not None]
    with WriteBehind() as writes:
        for start in tqdm(range(0, len(captioned), batch_size), desc=writer.tensors_path.name, unit="batch"):
            batch = captioned[start : start + batch_size]
            prompts = [row["caption"] for row in batch]
            unpadded = encode_prompts(tokenizer, text_encoder, prompts, max_tokens).unpadded
            host, ready = to_host(torch.cat(unpadded), store_dtype)
            writes.submit(_write_captions, writer, batch, host, [len(tokens) for tokens in unpadded], ready)
    writer.finish((row["key"] for row in rows), limit)


def _write_captions(
    writer: ShardWriter, batch: list[dict], host: torch.Tensor, lengths: list[int], ready
) -> None:
    """One batch's parts: `host` holds its embeddings end to end, `lengths` tokens each."""
    if ready is not None:
        ready.synchronize()
    for row, embedding in zip(batch, host.split(lengths), strict=True):
        writer.add(
            {
                "sample_id": row["key"],
                "status": STATUS_OK,
                "reason": None,
                "text_len": int(embedding.shape[0]),
            },
            embedding,
        )


def load_text_components(base_model: str | Path, device: torch.device):
    """(tokenizer, text encoder) of a base model directory, in the device's compute dtype."""
    from longcat.basemodel.loader import load_components

    loaded = load_components(
        base_model, device, compute_dtype(device), components=("tokenizer", "text_encoder")
    )
    return loaded["tokenizer"], loaded["text_encoder"]


def run_text_shard(
    settings: CacheSettings,
    shard_list: str | Path,
    cache: CacheLayout,
    shard: str,
    base_model: str | Path,
    device: torch.device,
) -> None:
    """The whole `cache_text_shard` job: encode the shard's captions, write the shard."""
    spec = checked_spec(cache.root, text_cache_spec(settings))
    rows = read_shard_rows(shard_list)
    with ShardWriter(cache, shard, TEXT_INDEX_SCHEMA, {"cache_key": cache_key(spec)}) as writer:
        if writer.finished(row["key"] for row in rows):
            log.info("%s: written by another job of this shard meanwhile; left as it is", writer.tensors_path)
            return
        tokenizer, text_encoder = load_text_components(base_model, device)
        cache_text_shard(
            rows,
            tokenizer,
            text_encoder,
            spec["max_tokens"],
            writer,
            torch_dtype(spec["dtype"]),
            failure_limit(settings, shard),
        )


def run_empty_text(
    settings: CacheSettings, cache: CacheLayout, base_model: str | Path, device: torch.device
) -> None:
    """The `cache_text_empty` job: the empty caption's embedding, for caption dropout and unconditional
    sampling."""
    spec = checked_spec(cache.root, text_cache_spec(settings))
    tokenizer, text_encoder = load_text_components(base_model, device)
    embedding = encode_prompts(tokenizer, text_encoder, [""], spec["max_tokens"]).unpadded[0]
    write_empty_text(
        cache.empty_text, embedding.to(torch_dtype(spec["dtype"])), {"cache_key": cache_key(spec)}
    )
