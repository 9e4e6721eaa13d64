"""Check every shard of both caches and remove the damaged ones (rule verify_cache)."""

import logging
import sys

from longcat.cache.verify import verify_caches
from longcat.paths import Layout
from longcat.settings import load_settings

smk = snakemake  # noqa: F821 (set by Snakemake's script directive)
logging.basicConfig(
    level=logging.INFO,
    format="%(asctime)s %(levelname)s %(message)s",
    handlers=[logging.FileHandler(smk.log[0], mode="w"), logging.StreamHandler(sys.stderr)],
)
paths = Layout.from_settings(load_settings(smk.config))
report = verify_caches(paths.vae_cache, paths.text_cache, paths.cache_verify_report, smk.threads)
logging.getLogger("verify_cache").log(
    logging.WARNING if report.problems else logging.INFO,
    "%s\nreport: %s",
    report.summary(),
    paths.cache_verify_report,
)
