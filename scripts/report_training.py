"""Figures of the TensorBoard scalars, the page of the videos and the page of what was trained, of a run
(rule report_training)."""

import logging

from longcat.report.training import TRAINING_OUTPUTS, write_training_report
from longcat.train.record import EXPORTED_RECORD_FILE, read_record

smk = snakemake  # noqa: F821 (set by Snakemake's script directive)
logging.basicConfig(filename=smk.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
write_training_report(
    smk.params.tensorboard,
    smk.params.validation,
    smk.input.samples,
    read_record(smk.params.final, EXPORTED_RECORD_FILE),
    {name: smk.output[name] for name in TRAINING_OUTPUTS},
)
