"""The pre-launch estimate (`snakemake estimate`): counts, bytes and hours from a metadata table."""

import dataclasses
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import load_bench

from longcat.config import REPO_ROOT, load_config
from longcat.report.estimate import estimate, format_estimate, run_estimate
from longcat.settings import load_settings
from longcat.train.estimate import PUBLISHED_DIT_CONFIG, dit_parameter_counts, step_time

REAL = load_settings(load_config(REPO_ROOT / "config" / "longcat-13b.yaml"))
PARAMETERS = 13_581_071_424  # the published DiT
BLOCK, ROOT = 282_132_992, 34_223_104 + 4_464_704  # one of its 48 blocks; embedders and final layer
COUNTS = dit_parameter_counts(PUBLISHED_DIT_CONFIG)
H100_PEAK = 989e12
NVLINK_BUS = 360e9  # bytes/s per GPU assumed for H100 within a node (longcat.train.estimate.CARDS)


def tables(plans, reasons):
    """Metadata of clips given as (frames, height, width, duration, count), and rejects per reason."""
    rows = [plan[:4] for plan in plans for _ in range(plan[4])]
    metadata = pa.table(
        {
            "plan_num_frames": pa.array([row[0] for row in rows], pa.int32()),
            "plan_height": pa.array([row[1] for row in rows], pa.int32()),
            "plan_width": pa.array([row[2] for row in rows], pa.int32()),
            "duration": pa.array([row[3] for row in rows], pa.float64()),
        }
    )
    rejected = pa.table({"reason": [reason for reason, count in reasons.items() for _ in range(count)]})
    return metadata, rejected


def real_estimate(metadata, rejected, train=REAL.train, figures=REAL.estimate):
    return estimate(metadata, rejected, REAL.cache, train, figures, PUBLISHED_DIT_CONFIG, "published")


def model_flops(tokens):
    return 6.0 * PARAMETERS * tokens + 12.0 * tokens**2 * 4096 * 48


# FSDP2 on 8 GPUs, bf16 parameters, fp32 gradients: each GPU receives 7/8 of what is gathered and sends 7/8
# of what is reduced. Unhidden: the first all-gathers of forward (root and first block) and of backward
# (last block), and the last reduce-scatter (first block and root).
EXPOSED_COMM_SECONDS = 7 / 8 * ((ROOT + 2 * BLOCK) * 2 + (BLOCK + ROOT) * 4) / NVLINK_BUS


def test_estimate_counts_bytes_and_hours_of_a_known_table():
    metadata, rejected = tables(
        [(93, 480, 832, 7.0, 3), (73, 480, 832, 5.0, 5), (73, 832, 480, 5.0, 2)],
        {"read_error": 1, "too_short": 2},
    )
    report = real_estimate(metadata, rejected)

    clips = report["clips"]
    assert (clips["accepted"], clips["rejected"]) == (10, 3)
    assert clips["rejected_by_reason"] == {"too_short": 2, "read_error": 1}
    assert clips["source_hours"] == pytest.approx((3 * 7.0 + 7 * 5.0) / 3600)
    assert clips["by_frames"] == {"93": 3, "73": 7}
    assert clips["by_resolution"] == {"480x832": 8, "832x480": 2}

    # bf16 latents [16, 24, 60, 104] and [16, 19, 60, 104]; captions [512, 4096] in bf16, plus the empty one.
    disk = report["disk"]
    assert disk["vae_cache_bytes"] == 3 * 4_792_320 + 7 * 3_793_920 == 40_934_400
    assert disk["text_cache_bytes_at_most"] == 11 * 4_194_304
    # fp32 weights, two fp32 moments and the fp32 weight average (train.ema_decay 0.999)
    assert disk["checkpoint_bytes"] == PARAMETERS * 16 == 217_297_142_784
    assert disk["checkpoint_holds"] == "fp32 weights + AdamW moments + weight average"
    assert disk["checkpoints_bytes"] == 2 * disk["checkpoint_bytes"]
    # bf16 in dit/, and its weight average's model beside it (train.ema_export: both).
    assert disk["exported_model_bytes"] == PARAMETERS * 2 and disk["exported_models"] == 2

    # 1.09 clips/s at 93x480x832; a 73-frame clip costs 73/93 of one. 38 captions/s. 8 GPUs.
    cache = report["cache_time"]
    assert cache["vae_gpu_hours"] == pytest.approx((3 + 7 * 73 / 93) / 1.09 / 3600)
    assert cache["vae_wall_hours"] == pytest.approx(cache["vae_gpu_hours"] / 8)
    assert cache["text_gpu_hours"] == pytest.approx(10 / 38 / 3600)

    # Batch 1 on each of 8 GPUs at the configured 46.6% MFU of an H100: a step takes one sample's FLOPs,
    # and waits for the part of FSDP2's communication that nothing hides.
    steps = {bucket["frames"]: bucket["step_seconds"] for bucket in report["buckets"]}
    assert steps[93] == pytest.approx(model_flops(37_440) / (H100_PEAK * 0.466) + EXPOSED_COMM_SECONDS)
    assert steps[73] == pytest.approx(model_flops(29_640) / (H100_PEAK * 0.466) + EXPOSED_COMM_SECONDS)
    training = report["training"]
    mean = (3 * steps[93] + 7 * steps[73]) / 10
    assert training["samples_per_step"] == 8 and training["mean_step_seconds"] == pytest.approx(mean)
    assert training["pass_hours"] == pytest.approx(10 / 8 * mean / 3600)
    assert training["run_hours"] == pytest.approx(10_000 * mean / 3600)
    assert training["run_gpu_hours"] == pytest.approx(8 * training["run_hours"])
    assert training["passes"] == pytest.approx(10_000 / (10 / 8))

    text = format_estimate(report)
    assert "10 accepted, 3 rejected (too_short: 2, read_error: 1)" in text
    assert "checkpoint 217 GB (fp32 weights + AdamW moments + weight average), 2 kept: 435 GB" in text
    assert (
        f"   93 frames:         3 clips,   37,440 tokens, 6.36 PFLOP/sample, {steps[93]:.3g} s/step" in text
    )
    # Which figure was measured where, and which is modelled.
    assert f"a step of the largest bucket (93x480x832): {steps[93]:.3g} s =" in text
    assert (
        "compute 13.80 s at 46.6% MFU (train.assumed_mfu, measured on one H100 80GB: 4 full-width blocks, "
        "no communication)" in text
    )
    assert (
        "FSDP2 communication, modelled: 47.5 GB all-gathered + 47.5 GB reduce-scattered per GPU per step "
        "at 360 GB/s: 0.26 s, of which 0.006 s not hidden behind compute" in text
    )


def test_estimate_of_the_real_config_scales_with_the_data_and_follows_its_figures():
    plans = [(93, 480, 832, 8.0, 200), (73, 480, 832, 5.0, 1500), (73, 832, 480, 5.0, 250)]
    plans += [(73, 624, 624, 5.0, 50), (49, 480, 832, 4.0, 100)]
    once = real_estimate(*tables(plans, {"too_short": 40, "undecodable": 10}))
    twice = real_estimate(*tables([(*plan[:4], 2 * plan[4]) for plan in plans], {"too_short": 80}))

    assert (once["clips"]["accepted"], twice["clips"]["accepted"]) == (2100, 4200)
    for part, key in [
        ("disk", "vae_cache_bytes"),
        ("cache_time", "vae_gpu_hours"),
        ("cache_time", "text_gpu_hours"),
        ("training", "pass_hours"),
        ("training", "steps_per_pass"),
    ]:
        assert twice[part][key] == pytest.approx(2 * once[part][key]), key
    assert twice["training"]["run_hours"] == pytest.approx(once["training"]["run_hours"])
    assert twice["training"]["passes"] == pytest.approx(once["training"]["passes"] / 2)
    assert once["disk"]["checkpoint_bytes"] == twice["disk"]["checkpoint_bytes"]
    # A 93-frame step is the slowest, a 49-frame one the fastest; the mean lies between.
    steps = {bucket["frames"]: bucket["step_seconds"] for bucket in once["buckets"]}
    assert steps[49] < once["training"]["mean_step_seconds"] < steps[93]
    assert 13 < steps[93] < 14.5 and 9 < steps[73] < 10.5  # the measured 13.9 s and 10.0 s per step

    # The figures come from the config: the card's typical MFU when train.assumed_mfu is null, the
    # configured VAE throughput.
    metadata, rejected = tables(plans, {})
    typical = real_estimate(metadata, rejected, train=dataclasses.replace(REAL.train, assumed_mfu=None))
    assert typical["training"]["assumed_mfu"] == 0.4
    assert typical["training"]["run_hours"] == pytest.approx(
        once["training"]["run_hours"] * 0.466 / 0.4, 1e-3
    )
    assert "compute 16.07 s at 40.0% MFU (the card's typical MFU, assumed)" in format_estimate(typical)
    slower = real_estimate(
        metadata, rejected, figures=dataclasses.replace(REAL.estimate, vae_clips_per_s=0.545)
    )
    assert slower["cache_time"]["vae_gpu_hours"] == pytest.approx(2 * once["cache_time"]["vae_gpu_hours"])


def test_fsdp_communication_per_step_of_the_published_model():
    def step(**train):
        return step_time(COUNTS, 48, model_flops(37_440), dataclasses.replace(REAL.train, **train), "h100")

    # 8 GPUs, bf16 parameters gathered for forward and again for backward (reshard_after_forward), fp32
    # gradients reduce-scattered: 47.5 GB each way per GPU, 0.26 s at 360 GB/s, hidden but for 6 ms.
    comm = step()["communication"]
    assert comm["all_gather_bytes"] == 7 / 8 * (PARAMETERS + 48 * BLOCK) * 2 == pytest.approx(47.466e9, 1e-4)
    assert comm["reduce_scatter_bytes"] == 7 / 8 * PARAMETERS * 4 == 47_533_749_984
    assert comm["seconds"] == pytest.approx((comm["all_gather_bytes"] + comm["reduce_scatter_bytes"]) / 360e9)
    assert comm["exposed_seconds"] == pytest.approx(EXPOSED_COMM_SECONDS) == pytest.approx(0.00605, 1e-3)
    compute = model_flops(37_440) / (H100_PEAK * 0.466)
    assert step()["step_seconds"] == pytest.approx(compute + EXPOSED_COMM_SECONDS)

    # Kept for backward: gathered once. Each micro-batch gathers and reduces again. One GPU: nothing.
    kept = step(reshard_after_forward=False)["communication"]
    assert kept["all_gather_bytes"] == 7 / 8 * PARAMETERS * 2
    assert kept["exposed_seconds"] == pytest.approx(7 / 8 * ((ROOT + BLOCK) * 2 + (BLOCK + ROOT) * 4) / 360e9)
    twice = step(gradient_accumulation_steps=2)
    assert twice["communication"]["reduce_scatter_bytes"] == 2 * comm["reduce_scatter_bytes"]
    assert twice["step_seconds"] == pytest.approx(2 * step()["step_seconds"])
    alone = step(num_processes=1)
    assert alone["communication"]["seconds"] == 0 and alone["step_seconds"] == pytest.approx(compute)

    # Two nodes: 16 GPUs, the network's 45 GB/s; a configured bandwidth wins. Communication that outlasts
    # the compute is not hidden.
    nodes = step(nodes=2)["communication"]
    assert nodes["bus_gbps"] == 45 and nodes["reduce_scatter_bytes"] == 15 / 16 * PARAMETERS * 4
    slow = step(assumed_bus_bandwidth_gbps=1.0)["communication"]
    assert slow["bus_gbps"] == 1.0 and slow["seconds"] > compute
    assert slow["exposed_seconds"] == pytest.approx(slow["seconds"] - compute)


def test_run_estimate_writes_both_files_and_names_a_table_it_cannot_read(tmp_path):
    metadata, rejected = tables([(73, 480, 832, 5.0, 4)], {"missing_caption": 1})
    pq.write_table(metadata, tmp_path / "metadata.parquet")
    pq.write_table(rejected, tmp_path / "rejected.parquet")
    outputs = tmp_path / "out" / "estimate.json", tmp_path / "out" / "estimate.txt"
    args = (REAL.cache, REAL.train, REAL.estimate, REAL.base_model, tmp_path / "no-base-model", *outputs)

    text = run_estimate(tmp_path / "metadata.parquet", tmp_path / "rejected.parquet", *args)

    assert outputs[1].read_text() == text and "4 accepted, 1 rejected (missing_caption: 1)" in text
    assert json.loads(outputs[0].read_text())["model"]["parameters"] == PARAMETERS
    pq.write_table(pa.table({"key": ["a.mp4"]}), tmp_path / "old.parquet")
    with pytest.raises(ValueError, match=r"old\.parquet: expected a table with the columns plan_num_frames"):
        run_estimate(tmp_path / "old.parquet", tmp_path / "rejected.parquet", *args)


def test_text_bench_flop_formula_matches_counted_flops():
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    bench = load_bench("bench_text_gpu")  # measures estimate.text_captions_per_s
    torch.manual_seed(0)
    encoder = bench.build_encoder(bench.UMT5_TINY, torch.device("cpu"))
    encoder.set_attn_implementation("eager")  # the counter sees eager attention's matmuls, not CPU SDPA's
    ids = torch.randint(0, 256, (1, bench.MAX_TOKENS))
    mask = torch.ones_like(ids)
    mask[:, 300:] = 0  # padded as the cache pads: the encoder still runs every position
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        encoder(ids, attention_mask=mask)
    assert bench.encoder_flops(bench.UMT5_TINY, bench.MAX_TOKENS) == counter.get_total_flops()


def test_text_bench_runs_the_cache_job_on_cpu(tmp_path):
    import torch

    from longcat.basemodel.tiny import train_tiny_tokenizer

    bench = load_bench("bench_text_gpu")  # measures estimate.text_captions_per_s
    encoder = bench.build_encoder(bench.UMT5_TINY, torch.device("cpu"))
    result = bench.measure(
        train_tiny_tokenizer(), encoder, bench.make_captions(3), 2, tmp_path, torch.device("cpu")
    )
    assert result["captions_per_s"] > 0 and result["encode_only_captions_per_s"] > 0
    assert result["mb_per_caption"] > 0


def test_the_estimate_reads_only_the_settings_its_rule_tracks():
    # The estimate target's params are estimate_settings: the script builds the sections from them, every
    # other train and cache setting unset. The estimate must come out the same, so that a change of any
    # other setting (the learning rate, say) rightly reruns nothing.
    from longcat.settings import Cache, Train, build
    from longcat.train.estimate import estimate_settings

    tracked = estimate_settings(REAL)
    metadata, rejected = tables([(93, 480, 832, 7.0, 3), (73, 480, 832, 5.0, 7)], {"too_short": 1})
    full = estimate(metadata, rejected, REAL.cache, REAL.train, REAL.estimate, PUBLISHED_DIT_CONFIG, "x")
    partial = estimate(
        metadata,
        rejected,
        build(Cache, tracked["cache"]),
        build(Train, tracked["train"]),
        REAL.estimate,
        PUBLISHED_DIT_CONFIG,
        "x",
    )
    assert partial == full
