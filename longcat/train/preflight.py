"""What training checks before it starts a process group or builds the model: that the caches hold
enough usable samples for a whole batch on every rank. When they do not, one message says how many
samples each cache holds by status, why the others failed (by reason, with an example and the fix of
each), and what to change."""

from __future__ import annotations

from longcat.cache.reader import CacheReader, describe_contents
from longcat.settings import Train
from longcat.train.data import BucketedSampler
from longcat.train.heldout import split_heldout


def training_set_problem(reader: CacheReader, cfg: Train) -> str | None:
    """Why `reader`'s training samples (the held-out ones left out) give no whole batch per rank, or None
    when they do (the loader's rule)."""
    training, heldout = split_heldout(reader.samples, cfg.heldout_fraction)
    shapes = [sample.latent_shape for sample in training]
    sampler = BucketedSampler(shapes, cfg.train_batch_size, cfg.world_size, 0, cfg.seed)
    if sampler.batches_per_rank:
        return None
    buckets = {"x".join(map(str, shape)): count for shape, count in sampler.bucket_sizes().items()}
    found = f"{len(shapes):,} in buckets {buckets}" if buckets else "none"
    message = (
        f"expected at least {cfg.train_batch_size * cfg.world_size:,} usable samples of one latent shape "
        f"(train.train_batch_size {cfg.train_batch_size} on each of {cfg.world_size} ranks), found {found}"
        + (f" besides {len(heldout):,} held out (train.heldout_fraction)" if heldout else "")
        + ". A sample is usable when the VAE and the text cache both hold it as ok.\n"
        f"{describe_contents(reader.vae_dir, reader.text_dir)}"
    )
    if shapes:
        message += (
            "\nfix: a smaller train.train_batch_size or fewer ranks (train.num_processes x train.nodes), "
            "or more clips"
        )
    return message
