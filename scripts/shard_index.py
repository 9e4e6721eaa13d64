"""Extend the append-only shard assignment table (checkpoint shard_index)."""

import logging

from longcat.data.shards import update_assignments
from longcat.params import from_leaf_params
from longcat.settings import Shards, build

smk = snakemake  # noqa: F821 (set by Snakemake's script directive)
logging.basicConfig(filename=smk.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
update_assignments(
    smk.input.metadata, smk.params.store, smk.output[0], build(Shards, from_leaf_params(smk.params)["shards"])
)
