"""The base_model job: the published layout at {results}/base_model (longcat.basemodel.prepare_base_model)."""

import logging
import sys


def main(snakemake):
    sys.stderr = open(snakemake.log[0], "w")  # the job's log, also for tqdm and warnings
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    from longcat.basemodel import prepare_base_model

    params = snakemake.params.base_model
    prepare_base_model({"base_model": params}, snakemake.output[0], captions=params.get("captions", ()))


main(snakemake)  # noqa: F821
