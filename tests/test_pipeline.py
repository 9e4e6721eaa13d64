"""The sampler's math against hand computations, and the pipeline end to end on a tiny model with ffmpeg."""

import json
import subprocess

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from longcat.basemodel.loader import load_components
from longcat.flow import cfg_zero_star, normalize_latents, sampling_sigmas
from longcat.pipeline import LongCatVideoPipeline, denoise
from longcat.samples import render_samples, sample_settings
from longcat.video_io import write_mp4


@pytest.fixture(scope="module")
def pipe(tiny_base_model):
    return LongCatVideoPipeline(**load_components(tiny_base_model))


def test_sampling_sigmas_are_the_shifted_linspace_ending_at_zero():
    sigmas = sampling_sigmas(5, shift=12.0)
    base = np.linspace(1.0, 0.001, 5)
    expected = np.append(12.0 * base / (1 + 11.0 * base), 0.0)
    np.testing.assert_allclose(sigmas.numpy(), expected, rtol=1e-6)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0

    # The same schedule as diffusers' scheduler given the reference's unshifted sigmas.
    scheduler = FlowMatchEulerDiscreteScheduler(shift=12.0)
    scheduler.set_timesteps(5, sigmas=base.astype(np.float32))
    np.testing.assert_allclose(sigmas.numpy(), scheduler.sigmas.numpy(), rtol=1e-6)
    np.testing.assert_allclose(1000 * sigmas[:-1].numpy(), scheduler.timesteps.numpy(), rtol=1e-5)


def test_cfg_zero_star_matches_hand_computation():
    # Sample 0: uncond (1, 0), cond (2, 2): st = 2/1 = 2, pred = (2, 0) + 4 * ((2, 2) - (2, 0)) = (2, 8).
    # Sample 1: uncond (0, 2), cond (1, 1): st = 2/4 = 0.5, pred = (0, 1) + 4 * ((1, 1) - (0, 1)) = (4, 1).
    uncond = torch.tensor([[1.0, 0.0], [0.0, 2.0]]).view(2, 2, 1, 1, 1)
    cond = torch.tensor([[2.0, 2.0], [1.0, 1.0]]).view(2, 2, 1, 1, 1)
    guided = cfg_zero_star(cond, uncond, guidance_scale=4.0).view(2, 2)
    torch.testing.assert_close(guided, torch.tensor([[2.0, 8.0], [4.0, 1.0]]), rtol=1e-6, atol=1e-6)
    # With guidance 1 the result is the conditional prediction.
    torch.testing.assert_close(cfg_zero_star(cond, uncond, 1.0), cond)


class RecordingModel:
    """Stands in for the DiT with a known function of its inputs: out = a·x + b·t/1000 + text mean."""

    def __init__(self, a=0.3, b=-0.5):
        self.a, self.b, self.calls = a, b, []

    def __call__(
        self, hidden_states, timestep, encoder_hidden_states, encoder_attention_mask, num_cond_latents
    ):
        self.calls.append((hidden_states.clone(), timestep.clone(), num_cond_latents))
        text = encoder_hidden_states.mean(dim=(1, 2, 3)).view(-1, 1, 1, 1, 1)
        per_frame_sigma = timestep.view(timestep.shape[0], 1, timestep.shape[1], 1, 1) / 1000
        return self.a * hidden_states + self.b * per_frame_sigma + text


def test_euler_trajectory_matches_hand_computation():
    model = RecordingModel()
    start = torch.randn(1, 16, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    text = torch.zeros(1, 1, 4, 8)
    mask = torch.ones(1, 4, dtype=torch.long)
    sigmas = sampling_sigmas(4, shift=3.0)

    result = denoise(model, start, sigmas, text, mask)

    expected = start.double()
    for sigma, sigma_next in zip(sigmas[:-1].double(), sigmas[1:].double(), strict=True):
        model_out = model.a * expected + model.b * sigma
        expected = expected + (sigma_next - sigma) * (-model_out)
    torch.testing.assert_close(result.double(), expected, rtol=1e-5, atol=1e-5)
    timesteps = [call[1] for call in model.calls]
    np.testing.assert_allclose([float(t[0, 0]) for t in timesteps], (1000 * sigmas[:-1]).numpy(), rtol=1e-6)


def test_guided_denoise_batches_negative_first_and_keeps_condition_frames_clean():
    model = RecordingModel()
    start = torch.randn(1, 16, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    text = torch.full((1, 1, 4, 8), 1.0)
    negative = torch.full((1, 1, 4, 8), -1.0)
    mask = torch.ones(1, 4, dtype=torch.long)
    sigmas = sampling_sigmas(3, shift=12.0)

    result = denoise(model, start, sigmas, text, mask, negative, mask, guidance_scale=4.0, num_cond_latents=1)

    expected = start.double()
    for sigma, sigma_next in zip(sigmas[:-1].double(), sigmas[1:].double(), strict=True):
        timestep = torch.full((1, 1, 3, 1, 1), float(sigma), dtype=torch.float64)
        timestep[:, :, :1] = 0
        base = model.a * expected + model.b * timestep
        # The guidance scale is taken over the whole latent, conditioning frame included (official).
        guided = cfg_zero_star(base + 1.0, base - 1.0, 4.0).double()
        expected[:, :, 1:] = expected[:, :, 1:] + (sigma_next - sigma) * (-guided[:, :, 1:])
    torch.testing.assert_close(result.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(result[:, :, :1], start[:, :, :1])
    for hidden_states, timestep, num_cond_latents in model.calls:
        assert hidden_states.shape[0] == 2 and num_cond_latents == 1
        assert torch.all(timestep[:, 0] == 0) and torch.all(timestep[:, 1:] > 0)
        torch.testing.assert_close(hidden_states[:, :, :1], start[:, :, :1].expand(2, -1, -1, -1, -1))


def test_pipeline_samples_a_video_that_ffprobe_reads(pipe, tmp_path):
    output = pipe(
        "a red square moving across a blue background",
        num_frames=9,
        height=32,
        width=48,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        max_sequence_length=16,
    )
    frames = output.frames
    assert frames.shape == (1, 9, 32, 48, 3)
    assert frames.min() >= 0.0 and frames.max() <= 1.0 and np.isfinite(frames).all()

    path = write_mp4(frames[0], tmp_path / "sample.mp4", fps=15)
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
         "stream=codec_name,pix_fmt,width,height,nb_read_frames,avg_frame_rate", "-of", "json", str(path)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    stream = json.loads(probe.stdout)["streams"][0]
    assert stream["codec_name"] == "h264" and stream["pix_fmt"] == "yuv420p"
    assert (stream["width"], stream["height"], int(stream["nb_read_frames"])) == (48, 32, 9)
    assert stream["avg_frame_rate"] == "15/1"
    assert not list(tmp_path.glob(".*tmp*"))


def test_pipeline_is_deterministic_for_a_seed(pipe):
    def sample(seed):
        return pipe(
            "a green circle",
            num_frames=5,
            height=32,
            width=32,
            num_inference_steps=2,
            generator=torch.Generator().manual_seed(seed),
            max_sequence_length=16,
            output_type="latent",
        ).frames

    torch.testing.assert_close(sample(3), sample(3))
    assert not torch.equal(sample(3), sample(4))


def test_conditioning_video_keeps_the_latents_of_its_last_frames(pipe):
    video = torch.rand(1, 3, 5, 32, 32, generator=torch.Generator().manual_seed(2))
    generator = torch.Generator().manual_seed(5)
    latents = pipe(
        "a yellow triangle",
        num_frames=9,
        height=32,
        width=32,
        num_inference_steps=2,
        generator=generator,
        video=video,
        num_cond_frames=1,
        max_sequence_length=16,
        output_type="latent",
    ).frames
    # Continuation conditions on the video's last frames (official `prepare_latents`), encoded to the
    # posterior's mode as the caches encode the clips training conditions on.
    encoded = pipe.vae.encode(video[:, :, -1:] * 2 - 1).latent_dist.mode()
    torch.testing.assert_close(latents[:, :, :1], normalize_latents(encoded, pipe.vae.config))
    # Latents encoded already condition the same way.
    again = pipe(
        "a yellow triangle",
        num_frames=9,
        height=32,
        width=32,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(5),
        cond_latents=latents[:, :, :1],
        max_sequence_length=16,
        output_type="latent",
    ).frames
    torch.testing.assert_close(again, latents, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_conditioning_frames_encode_as_the_cache_encodes_the_clip(tiny_base_model, dtype):
    """A clip's frames given to the pipeline as floats (`u / 255`, as video readers hand them) reach the
    DiT as the same latents the VAE cache stored for the uint8 clip, bit for bit, in bf16 too."""
    from longcat.encoders.vae import encode_batch

    pipe = LongCatVideoPipeline(**load_components(tiny_base_model, dtype=dtype))
    frames = np.random.default_rng(3).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    cached = encode_batch(pipe.vae, [frames], torch.device("cpu"), dtype)
    video = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 255
    torch.testing.assert_close(pipe._encode_video(video), cached, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_frames": 8}, r"num_frames: expected 4k\+1"),
        ({"height": 40}, "multiples of 16"),
        ({"output_type": "pil"}, "output_type"),
        ({"negative_prompt": ["a", "b"]}, "negative_prompt: expected 1"),
        ({"video": torch.rand(1, 3, 5, 32, 32), "num_cond_frames": 9}, "num_cond_frames"),
        ({"video": torch.rand(1, 3, 5, 16, 16)}, "video: expected"),
        ({"cond_latents": torch.rand(1, 16, 3, 4, 4)}, r"cond_latents: expected .* 0 < N < 3"),
        ({"video": torch.rand(1, 3, 1, 32, 32), "cond_latents": torch.rand(1, 16, 1, 4, 4)}, "at most one"),
    ],
)
def test_bad_arguments_are_named(pipe, kwargs, message):
    arguments = {"num_frames": 9, "height": 32, "width": 32, "num_inference_steps": 1, **kwargs}
    with pytest.raises(ValueError, match=message):
        pipe("a prompt", **arguments)


def test_write_mp4_refuses_odd_sizes_and_bad_shapes(tmp_path):
    with pytest.raises(ValueError, match="even height and width"):
        write_mp4(np.zeros((3, 15, 16, 3)), tmp_path / "odd.mp4")
    with pytest.raises(ValueError, match=r"expected \[F, H, W, 3\]"):
        write_mp4(np.zeros((3, 16, 16)), tmp_path / "flat.mp4")
    assert not list(tmp_path.iterdir())


def test_render_samples_writes_one_video_per_prompt(tiny_base_model, tmp_path):
    from longcat.config import load_config
    from longcat.settings import load_settings

    config = load_config()
    config["frames"].update(num_frames=5, fps=15, frame_buckets=[5], buckets=[[32, 48], [48, 32]])
    config["sample"] = {"prompts": ["a red square", "a blue circle"], "num_inference_steps": 1}
    config["sample"] |= {"guidance_scale": 4.0, "num_frames": 5}
    config["train"]["seed"] = 3
    typed = load_settings(config)
    settings = sample_settings(typed.sample, typed.frames, typed.train.seed)
    assert (settings["num_frames"], settings["height"], settings["width"], settings["seed"]) == (5, 32, 48, 3)

    paths = render_samples(tiny_base_model, tmp_path / "samples", settings)
    assert [p.name for p in paths] == ["sample-00.mp4", "sample-01.mp4"]
    prompts = json.loads((tmp_path / "samples" / "prompts.json").read_text())
    assert prompts == {"sample-00.mp4": "a red square", "sample-01.mp4": "a blue circle"}
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-show_entries", "stream=nb_read_frames,width,height",
         "-of", "json", str(paths[1])],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    stream = json.loads(probe.stdout)["streams"][0]
    assert (stream["width"], stream["height"], int(stream["nb_read_frames"])) == (48, 32, 5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples"]
