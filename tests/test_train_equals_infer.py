"""Train = infer, input by input: what one training micro-batch feeds the DiT equals what the pipeline
feeds it, for the same clip, caption, σ and noise.

The training side is the trainer's own code: the loader's batch (`CacheBatches`, captions padded as it
pads a batch of two captions of different lengths, a dropped caption) and `dit_inputs`, the function the
micro-step, the held-out loss and nothing else build the DiT's inputs with. The sampling side is
`LongCatVideoPipeline.__call__` on the same clip's caption and, conditioned, on its leading frames as
pixels (encoded by the pipeline's VAE path, as the official pipeline encodes an image or a video's
frames). A forward hook records every input the pipeline hands the real DiT and makes its output the
ideal prediction x0 - ε of that clip, so the Euler steps follow the straight path and the pipeline's
input at step k is the clip noised to the sampler's σ_k: the training input at σ_k.

Compared at every step, in float32 and with the DiT in bf16 (where both sides round to bf16 at its
entry): the noisy latents (conditioning frames clean), the timestep per latent frame (0 on conditioning
frames), the caption tensor and mask (padded to the caption length, not to the batch's longest), the
dropped caption against the negative branch under guidance, the number of conditioning latents; and the
DiT's outputs on both. The loss leaves the conditioning frames out.
"""

from __future__ import annotations

import os

import pytest
import torch
from conftest import build_caches, planned

from longcat.basemodel.loader import load_components
from longcat.cache.reader import CacheReader
from longcat.config import load_config
from longcat.data.demo import DEMO_CAPTIONS, DemoClip, encode_clip
from longcat.data.frames import decode_clip
from longcat.data.metadata import stored_plan
from longcat.flow import sampling_sigmas
from longcat.model.loading import load_dit
from longcat.pipeline import LongCatVideoPipeline
from longcat.settings import load_settings
from longcat.train.data import BatchItem, CacheBatches
from longcat.train.objective import dit_inputs, per_sample_loss

STEPS = 4
# A short caption and a long one: a batch of both pads the short one further than its own length.
CAPTIONS = (DEMO_CAPTIONS[4], DEMO_CAPTIONS[2])


@pytest.fixture(scope="module")
def clip_cache(tmp_path_factory, tiny_base_model):
    """One clip (17 frames, 64x112) cached twice, under the two captions, as the cache jobs cache it."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("equal")
    clip = DemoClip("clip", "testsrc2=size=112x64:rate=15", CAPTIONS[0], 112, 64, 15, 1.2, faststart=False)
    encode_clip(clip, root / "clip-0.mp4")
    os.link(root / "clip-0.mp4", root / "clip-1.mp4")
    config = load_config()
    config["source"] = {"kind": "local", "path": str(root)}
    settings = load_settings(config)
    rows = [
        planned(
            {
                "key": f"clip-{index}.mp4",
                "caption": caption,
                "width": 112,
                "height": 64,
                "aspect_ratio": 112 / 64,
                "fps": 15.0,
                "frame_count": 18,
                "duration": 1.2,
                "rotation": 0,
            },
            settings.frames,
        )
        for index, caption in enumerate(CAPTIONS)
    ]
    reader = CacheReader(*build_caches(root / "cache", settings, tiny_base_model, rows))
    pixels = decode_clip(str(root / "clip-0.mp4"), stored_plan(rows[0], settings.frames))
    video = torch.from_numpy(pixels).permute(3, 0, 1, 2)[None].float() / 255  # [1, 3, F, H, W] in [0, 1]
    return reader, video


class IdealPrediction:
    """A forward hook on the DiT: records each call's inputs and answers x0 - ε, the exact target."""

    def __init__(self, target: torch.Tensor):
        self.target = target
        self.calls: list[dict] = []

    def __call__(self, module, args, kwargs, output):
        self.calls.append(
            {key: value.clone() if torch.is_tensor(value) else value for key, value in kwargs.items()}
        )
        batch = kwargs["hidden_states"].shape[0]
        return self.target.expand(batch, *self.target.shape[1:]).to(output.dtype)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, where: str, tolerance: dict) -> None:
    torch.testing.assert_close(actual, expected, **tolerance, msg=lambda found: f"{where}: {found}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("num_cond", [0, 1, 2], ids=["text_to_video", "image_to_video", "continuation"])
def test_training_feeds_the_dit_what_sampling_feeds_it(clip_cache, tiny_base_model, dtype, num_cond):
    reader, video = clip_cache
    max_tokens = reader.max_tokens
    batches = CacheBatches(reader)
    # Training: the clip in a batch with the longer caption, and the clip with its caption dropped.
    batch = batches[[BatchItem(0, False), BatchItem(1, False)]]
    dropped = batches[[BatchItem(0, True)]]
    latents = batch["latents"][:1]
    text, mask = batch["text_states"][:1], batch["text_mask"][:1]
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(11))

    # The text encoder and the VAE in float32 as the caches ran them; the DiT in the training's dtype.
    parts = load_components(tiny_base_model, components=("tokenizer", "text_encoder", "vae", "scheduler"))
    dit = load_dit(tiny_base_model / "dit", dtype=dtype)
    pipe = LongCatVideoPipeline(dit=dit, **parts, max_sequence_length=max_tokens)
    ideal = IdealPrediction(latents - noise)
    hook = pipe.dit.register_forward_hook(ideal, with_kwargs=True)
    frames = (num_cond - 1) * pipe.vae_scale_factor_temporal + 1 if num_cond else 0
    conditioning = {"video": video[:, :, :frames]} if num_cond else {}
    try:
        pipe(
            CAPTIONS[0],
            num_frames=video.shape[2],
            height=video.shape[3],
            width=video.shape[4],
            num_inference_steps=STEPS,
            guidance_scale=4.0,
            latents=noise,
            output_type="latent",
            **conditioning,
        )
    finally:
        hook.remove()

    sigmas = sampling_sigmas(STEPS, float(pipe.scheduler.config.shift))
    # Float32 exactly but for the Euler steps' rounding; bf16 within one rounding of the DiT's input.
    close = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1.6e-2, "atol": 1e-5}
    assert len(ideal.calls) == STEPS
    for step, call in enumerate(ideal.calls):
        where = f"step {step} (σ {float(sigmas[step]):.4f})"
        flow, trained = dit_inputs(latents, text, mask, sigmas[step : step + 1], noise, num_cond)
        # Guidance runs the negative and the positive branch as one batch: [negative, positive].
        negative, positive = (
            {key: value[half] if torch.is_tensor(value) else value for key, value in call.items()}
            for half in (slice(0, 1), slice(1, 2))
        )
        assert positive["num_cond_latents"] == trained["num_cond_latents"] == num_cond, where
        # What the DiT computes with: its inputs in its own dtype (it rounds the timestep there too).
        assert_close(positive["hidden_states"], trained["hidden_states"].to(dtype), where, close)
        assert torch.equal(negative["hidden_states"], positive["hidden_states"]), where
        timestep = trained["timestep"].expand(1, latents.shape[2]) if num_cond == 0 else trained["timestep"]
        for branch in (negative, positive):
            assert torch.equal(branch["timestep"].to(dtype), timestep.to(dtype)), where
        assert positive["encoder_hidden_states"].shape == (1, 1, max_tokens, text.shape[-1]), where
        assert torch.equal(positive["encoder_hidden_states"], text.to(dtype)), where
        assert torch.equal(positive["encoder_attention_mask"], mask), where
        # The dropped caption is the negative branch that guidance samples against.
        assert torch.equal(negative["encoder_hidden_states"], dropped["text_states"].to(dtype)), where
        assert torch.equal(negative["encoder_attention_mask"], dropped["text_mask"]), where
        # The same DiT on both gives the same prediction (in bf16, within what one rounding of an input
        # moves a bf16 DiT's output).
        output_close = close if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
        assert_close(pipe.dit(**positive), pipe.dit(**trained), where, output_close)

    if num_cond:
        # Conditioning frames: clean at every step, the cache's leading latents (the pipeline encoded the
        # frames alone; the causal VAE gives what the whole clip's encode holds), and out of the loss.
        for call in ideal.calls:
            cond = call["hidden_states"][1:, :, :num_cond]
            assert_close(
                cond,
                latents[:, :, :num_cond].to(dtype),
                "conditioning frames",
                {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else close,
            )
        flow, _ = dit_inputs(latents, text, mask, torch.tensor([0.5]), noise, num_cond)
        assert (flow.loss_mask[:, :, :num_cond] == 0).all() and (flow.loss_mask[:, :, num_cond:] == 1).all()
        off_on_the_clean_frames = flow.target.clone()
        off_on_the_clean_frames[:, :, :num_cond] += 3.0
        assert per_sample_loss(off_on_the_clean_frames, flow).abs().max() == 0
