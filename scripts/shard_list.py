"""Write one shard list: the metadata rows of its keys (rule shard_list)."""

import logging

from longcat.data.shards import build_shard_list

smk = snakemake  # noqa: F821 (set by Snakemake's script directive)
logging.basicConfig(filename=smk.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
build_shard_list(
    smk.input.assignments, smk.input.metadata, smk.wildcards.shard, smk.params.excluded, smk.output[0]
)
