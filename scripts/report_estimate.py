"""The pre-launch estimate as a page of the report (rule report_estimate)."""

import logging

from longcat.report.data import write_estimate_page

smk = snakemake  # noqa: F821 (set by Snakemake's script directive)
logging.basicConfig(filename=smk.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
write_estimate_page(smk.input[0], smk.output[0])
