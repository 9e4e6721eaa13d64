"""Data stage: source -> manifest -> probe chunks -> metadata + rejects -> append-only shard lists.

Relisting the source is explicit: `snakemake --forcerun manifest` (the manifest has no inputs for a
real source, so nothing else makes it stale). The demo is a local source whose directory the
demo_clips rule writes: there the clips are the manifest's input, so more demo clips relist and
reprobe in the same invocation. Probe chunks and the shard assignment keep their history under
`{results}/store/`, outside the rules' outputs, because Snakemake deletes outputs before a job runs;
that history is what makes a relist re-probe only new or changed objects and keeps old shard lists
untouched.

Params carry settings as plain values, one param per setting (`leaf_params`): Snakemake compares
those between runs, reruns a job whose params changed (it ignores objects it cannot represent) and
names the settings that changed; the scripts build the typed settings from them (`from_leaf_params`).
"""

from longcat.data import shards as shard_tables
from longcat.data.demo import check_demo_folder
from longcat.paths import chunk_id
from longcat.params import leaf_params

PROBE_CHUNKS = [chunk_id(index) for index in range(SETTINGS.probe.chunks)]
# The demo's clips, as an input of the jobs that list and read them (none for a real source).
DEMO_CLIPS = SETTINGS.source.path if SETTINGS.demo else []


localrules:
    manifest,
    metadata,
    shard_index,
    shard_list,
    shards,


wildcard_constraints:
    chunk=r"\d{3}",


if SETTINGS.demo:
    # The demo rule replaces its whole folder: never let it take one that holds the user's clips.
    try:
        check_demo_folder(SETTINGS.source.path)
    except ValueError as error:
        raise WorkflowError(str(error)) from None

    rule demo_clips:
        output:
            directory(SETTINGS.source.path),
        log:
            str(PATHS.log("demo_clips")),
        conda:
            "../envs/data.yaml"
        params:
            **leaf_params(demo=SETTINGS.demo),
        script:
            "../scripts/demo_clips.py"


rule manifest:
    input:
        demo=DEMO_CLIPS,
    output:
        manifest=str(PATHS.manifest),
        unpaired=str(PATHS.unpaired),
    log:
        str(PATHS.log("manifest")),
    conda:
        "../envs/data.yaml"
    params:
        **leaf_params(source=SETTINGS.source),
    script:
        "../scripts/manifest.py"


rule probe_chunk:
    input:
        manifest=str(PATHS.manifest),
        demo=DEMO_CLIPS,
    output:
        str(PATHS.metadata_part("{chunk}")),
    log:
        str(PATHS.log("probe_chunk/{chunk}")),
    conda:
        "../envs/data.yaml"
    # One Python process, bound by the GIL: about one core whatever probe.workers is (bench/RESULTS.md,
    # "Probe jobs at once"), so a node runs as many probe jobs as it has cores.
    threads: 1
    # Only what the records depend on: acceptance limits (probe.min_width, ...) never re-probe.
    params:
        **leaf_params(source=SETTINGS.source),
        chunks=SETTINGS.probe.chunks,
        store=str(PATHS.probe_store("{chunk}")),
        workers=SETTINGS.probe.workers,
        decode_check=SETTINGS.probe.decode_check,
        max_caption_bytes=SETTINGS.probe.max_caption_bytes,
    script:
        "../scripts/probe_chunk.py"


rule metadata:
    input:
        manifest=str(PATHS.manifest),
        unpaired=str(PATHS.unpaired),
        parts=[str(PATHS.metadata_part(chunk)) for chunk in PROBE_CHUNKS],
    output:
        metadata=str(PATHS.metadata),
        rejected=str(PATHS.rejected),
    log:
        str(PATHS.log("metadata")),
    conda:
        "../envs/data.yaml"
    params:
        **leaf_params(probe=SETTINGS.probe, frames=SETTINGS.frames),
    script:
        "../scripts/metadata.py"


checkpoint shard_index:
    input:
        metadata=str(PATHS.metadata),
        exclude=SETTINGS.shards.exclude or [],
    output:
        str(PATHS.assignments),
    log:
        str(PATHS.log("shard_index")),
    conda:
        "../envs/data.yaml"
    params:
        **leaf_params(shards=SETTINGS.shards),
        store=str(PATHS.assignment_store),
    script:
        "../scripts/shard_index.py"


# Both inputs are ancient: the assignment table and the metadata grow when new videos arrive, but the
# rows of an existing shard never change, so its list (and the caches built from it) must not rerun.
# Settings that change rows (the source, frames, probe limits) and the shard's excluded keys are params
# instead: a shard list of another source is never taken for this one's.
rule shard_list:
    input:
        assignments=ancient(str(PATHS.assignments)),
        metadata=ancient(str(PATHS.metadata)),
    output:
        str(PATHS.shard_list("{shard}")),
    log:
        str(PATHS.log("shard_list/{shard}")),
    wildcard_constraints:
        shard=r"\d{5,9}",
    conda:
        "../envs/data.yaml"
    params:
        **leaf_params(
            source=SETTINGS.source.identity(),
            frames=SETTINGS.frames,
            probe={
                "min_width": SETTINGS.probe.min_width,
                "min_height": SETTINGS.probe.min_height,
            },
        ),
        # A function of the wildcards only: Snakemake ignores params derived from input for reruns.
        excluded=lambda wildcards: shard_tables.excluded_in_shard(
            PATHS.assignments, SETTINGS.shards.exclude, wildcards.shard
        ),
    script:
        "../scripts/shard_list.py"


rule shards:
    input:
        all_shard_lists,
