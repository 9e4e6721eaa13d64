"""The per-shard table and figures of both caches for the report (rule report_caches)."""

import logging
from pathlib import Path

from longcat.paths import Layout
from longcat.report.caches import CACHE_OUTPUTS, write_cache_report
from longcat.settings import load_settings

smk = snakemake  # noqa: F821 (set by Snakemake's script directive)
logging.basicConfig(filename=smk.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
settings = load_settings(smk.config)
write_cache_report(
    Layout.from_settings(settings),
    [Path(path).stem.removeprefix("shard-") for path in smk.input.shard_lists],
    settings.cache.max_tokens,
    {name: smk.output[name] for name in CACHE_OUTPUTS},
)
