"""The GPU speed benches' own steps, on the CPU at tiny sizes: what bench/gpu_speed.sh runs on a GPU once."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import free_port, load_bench


def test_train_bench_times_each_attention_kernel_and_a_case_per_kernel():
    import torch.distributed as dist

    bench = load_bench("bench_train_gpu")
    kernels = [
        bench.attention_kernel(256, backend, on_gpu=False, iters=1) for backend in ("sdpa", "sdpa_cudnn")
    ]
    assert [kernel["backend"] for kernel in kernels] == ["sdpa", "sdpa_cudnn"]
    assert all(kernel["ms_fwd_bwd"] > 0 and kernel["sdpa_default_kernel"] for kernel in kernels)

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        case = bench.measure("selective", False, 1, 1, 1, False, latent_frames=2, attention="sdpa_cudnn")
    finally:
        dist.destroy_process_group()
    assert case["attention_backend"] == "sdpa_cudnn" and case["latent_shape"] == [16, 2, 16, 16]
    assert case["step_seconds"] > 0 and case["achieved_tflops"] > 0
    assert bench.parse_case("19:sdpa_cudnn") == (19, "sdpa_cudnn")


def test_vae_bench_speed_steps_compare_with_a_float32_reference():
    from diffusers import AutoencoderKLWan

    bench = load_bench("bench_vae_gpu")
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    vae = AutoencoderKLWan(**bench.TINY_VAE).eval()
    clip = np.random.default_rng(0).integers(0, 256, (5, 32, 48, 3), dtype=np.uint8)
    reference = bench.reference_latents(vae, clip, cpu)
    # The real job's settings (channels-last, fused norms) in batches of 2 against the plain float32 encoder.
    options = dataclasses.replace(bench.REAL_CACHE, vae_batch_size=2)
    rate = bench.encode_rate(vae, options, clip, cpu)
    assert rate["latent_shape"] == [16, 2, 4, 6] and rate["encode_only_clips_per_s"] > 0
    error = bench.parity(vae, options, clip, reference, cpu)
    assert error["rel_l2_error"] == pytest.approx(0, abs=1e-5) and error["max_abs_error"] < 1e-4
    assert bench.settings_of(options) == {
        "vae_batch_size": 2,
        "cudnn_benchmark": False,
        "channels_last": True,
        "fused_rms_norm": True,
        "vae_compile": False,
    }
