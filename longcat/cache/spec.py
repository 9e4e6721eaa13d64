"""Cache keys: what decides the bytes of a VAE or text cache, hashed into its directory name.

    {cache_dir}/vae/<key>/spec.json      what made the cache (its hash is <key>)
    {cache_dir}/text/<key>/spec.json

A setting belongs in a spec exactly when it changes a cached byte; the tiny model's tokenizer learns a
fixed corpus, so no key depends on where the clips come from.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Protocol

from longcat.data.buckets import resolution_buckets
from longcat.files import atomic_write_text
from longcat.settings import BaseModel, Cache, Frames

# Bump when the decode, normalisation or file layout changes: old caches then get a new key.
# 2: a checksum (XXH3-64) per cached tensor and parquet page checksums in the index files.
CACHE_FORMAT = 2
SPEC_FILE = "spec.json"


class CacheError(RuntimeError):
    """A cache directory or shard that cannot be used as it is; the message names the file."""


class CacheSettings(Protocol):
    """The settings a cache key reads (a whole workflow's `Settings` or a run's `RunSettings`)."""

    frames: Frames
    cache: Cache
    base_model: BaseModel


def vae_cache_spec(settings: CacheSettings) -> dict:
    """Everything that changes the bytes of a VAE cache shard (and nothing that does not)."""
    frames = settings.frames
    model = settings.base_model.identity()
    return {
        "kind": "vae",
        "format": CACHE_FORMAT,
        "model": model,
        "frames": {
            "num_frames": frames.num_frames,
            "fps": frames.fps,
            "frame_buckets": sorted(set(frames.frame_buckets)),
            "short_clip": frames.short_clip,
            # The largest time stretch allowed (1.0: clips are sampled at exactly fps).
            "max_stretch": frames.max_stretch if frames.short_clip == "stretch" else 1.0,
            "resolution": frames.resolution,
            "buckets": [list(bucket) for bucket in resolution_buckets(frames)],
        },
        "dtype": settings.cache.dtype,
    }


def text_cache_spec(settings: CacheSettings) -> dict:
    """Everything that changes the bytes of a text cache shard."""
    return {
        "kind": "text",
        "format": CACHE_FORMAT,
        "model": settings.base_model.identity(),
        "max_tokens": settings.cache.max_tokens,
        "dtype": settings.cache.dtype,
    }


def canonical_json(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def cache_key(spec: dict) -> str:
    """A short, stable hash of the spec: the name of the cache directory."""
    return hashlib.sha256(canonical_json(spec).encode("utf-8")).hexdigest()[:16]


def write_spec(path: str | Path, spec: dict) -> None:
    atomic_write_text(path, json.dumps(spec, sort_keys=True, indent=2) + "\n")


def read_spec(cache_dir: str | Path) -> dict:
    path = Path(cache_dir, SPEC_FILE)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CacheError(f"{path}: missing; every cache directory holds the spec.json that made it") from None
    except ValueError as error:
        raise CacheError(f"{path}: not valid JSON: {error}") from None


def checked_spec(cache_dir: str | Path, expected: dict) -> dict:
    """The spec a cache directory was made with, when it is the one the settings give (else CacheError)."""
    spec = read_spec(cache_dir)
    if spec != expected:
        raise CacheError(
            f"{Path(cache_dir, SPEC_FILE)}: does not match the config (key {cache_key(expected)}); "
            "rerun `snakemake cache`"
        )
    return spec
