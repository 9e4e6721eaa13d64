"""LongCatVideoTransformer3DModel against the reference fixtures, and its documented semantics."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from conftest import load_bench
from safetensors.torch import load_file

from longcat import LongCatSingleStreamBlock, LongCatVideoTransformer3DModel

FIXTURES = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / "longcat_dit"
TINY_CONFIG = dict(
    hidden_size=64,
    depth=2,
    num_heads=4,
    caption_channels=32,
    adaln_tembed_dim=32,
    text_tokens_zero_pad=True,
)


@pytest.fixture(scope="module")
def reference_model():
    return LongCatVideoTransformer3DModel.from_pretrained(FIXTURES / "tiny_dit")


@pytest.fixture(scope="module")
def cases():
    return load_file(FIXTURES / "tiny_dit_cases.safetensors")


def tiny_model(seed: int = 0, **overrides) -> LongCatVideoTransformer3DModel:
    torch.manual_seed(seed)
    model = LongCatVideoTransformer3DModel(**{**TINY_CONFIG, **overrides})
    # Default init leaves the gates near zero; larger weights make every path visible in the output.
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    return model


def tiny_inputs(batch=2, frames=3, height=4, width=6, text_len=5, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(batch, 16, frames, height, width, generator=generator),
        timestep=torch.rand(batch, generator=generator) * 1000,
        encoder_hidden_states=torch.randn(batch, 1, text_len, 32, generator=generator),
    )


def relative_error(output: torch.Tensor, expected: torch.Tensor) -> float:
    return ((output - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize(
    "case, kwargs",
    [
        ("a", dict(timestep="a_timestep", mask="a_encoder_attention_mask")),
        ("b", dict(timestep="b_timestep", mask="a_encoder_attention_mask", num_cond="b_num_cond_latents")),
        ("c", dict(timestep="c_timestep")),
    ],
)
def test_matches_reference_outputs(reference_model, cases, case, kwargs):
    inputs = "c" if case == "c" else "a"
    with torch.no_grad():
        output = reference_model(
            cases[f"{inputs}_hidden_states"],
            cases[kwargs["timestep"]],
            cases[f"{inputs}_encoder_hidden_states"],
            cases[kwargs["mask"]] if "mask" in kwargs else None,
            num_cond_latents=cases[kwargs["num_cond"]] if "num_cond" in kwargs else 0,
        )
    expected = cases[f"{case}_output"]
    assert output.dtype == torch.float32
    assert output.shape == expected.shape
    assert relative_error(output, expected) <= 1e-4


def test_full_size_names_shapes_and_count_on_meta():
    reference = json.loads((FIXTURES / "full_state_dict_shapes.json").read_text())
    with torch.device("meta"):
        model = LongCatVideoTransformer3DModel.from_config(reference["config"])
    shapes = {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
    assert list(shapes) == list(reference["state_dict"])
    assert shapes == reference["state_dict"]
    assert len(shapes) == 1022
    assert sum(p.numel() for p in model.parameters()) == reference["num_parameters"] == 13_581_071_424
    assert model.blocks[0].ffn.w1.out_features == 11008


def test_exports_and_fsdp_unit():
    from longcat.model import LongCatSingleStreamBlock as block_from_package

    assert block_from_package is LongCatSingleStreamBlock
    assert LongCatVideoTransformer3DModel._no_split_modules == ["LongCatSingleStreamBlock"]
    model = tiny_model()
    assert all(isinstance(block, LongCatSingleStreamBlock) for block in model.blocks)
    assert not any("distributed" in type(module).__module__ for module in model.modules())


def test_batch_timestep_equals_per_frame_timestep():
    model = tiny_model()
    inputs = tiny_inputs()
    per_frame = inputs["timestep"][:, None].expand(2, 3).contiguous()
    with torch.no_grad():
        expected = model(**inputs)
        output = model(**{**inputs, "timestep": per_frame})
    torch.testing.assert_close(output, expected, rtol=0, atol=0)


def test_per_frame_timesteps_modulate_each_frame():
    model = tiny_model()
    inputs = tiny_inputs(batch=1)
    timestep = torch.tensor([[100.0, 500.0, 900.0]])
    changed_last = torch.tensor([[100.0, 500.0, 10.0]])
    with torch.no_grad():
        output = model(**{**inputs, "timestep": timestep})
        other = model(**{**inputs, "timestep": changed_last})
    assert not torch.allclose(output, other)


def test_condition_frames_see_only_condition_frames_and_no_text():
    model = tiny_model()
    inputs = tiny_inputs()
    inputs["timestep"] = torch.tensor([[0.0, 700.0, 700.0], [0.0, 300.0, 300.0]])
    other_noisy = inputs["hidden_states"].clone()
    other_noisy[:, :, 1:] = torch.randn_like(other_noisy[:, :, 1:])
    other_text = torch.randn_like(inputs["encoder_hidden_states"])
    with torch.no_grad():
        base = model(**inputs, num_cond_latents=1)
        noisy_changed = model(**{**inputs, "hidden_states": other_noisy}, num_cond_latents=1)
        text_changed = model(**{**inputs, "encoder_hidden_states": other_text}, num_cond_latents=1)
        no_cond = model(**inputs, num_cond_latents=0)
    torch.testing.assert_close(noisy_changed[:, :, :1], base[:, :, :1], rtol=0, atol=1e-6)
    torch.testing.assert_close(text_changed[:, :, :1], base[:, :, :1], rtol=0, atol=1e-6)
    assert not torch.allclose(noisy_changed[:, :, 1:], base[:, :, 1:])
    assert not torch.allclose(text_changed[:, :, 1:], base[:, :, 1:])
    assert not torch.allclose(no_cond[:, :, :1], base[:, :, :1])


def test_zero_pad_text_ignores_padded_values_and_samples_are_independent():
    model = tiny_model(text_tokens_zero_pad=True)
    inputs = tiny_inputs(text_len=6)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    garbage = inputs["encoder_hidden_states"].clone()
    garbage[1, :, 3:] = 100.0
    with torch.no_grad():
        output = model(**inputs, encoder_attention_mask=mask)
        with_garbage = model(**{**inputs, "encoder_hidden_states": garbage}, encoder_attention_mask=mask)
        alone = model(
            inputs["hidden_states"][1:],
            inputs["timestep"][1:],
            inputs["encoder_hidden_states"][1:],
            encoder_attention_mask=mask[1:],
        )
    torch.testing.assert_close(with_garbage, output, rtol=0, atol=1e-6)
    torch.testing.assert_close(alone, output[1:], rtol=1e-5, atol=1e-5)


def test_without_zero_pad_padded_tokens_are_not_attended():
    model = tiny_model(text_tokens_zero_pad=False)
    inputs = tiny_inputs(batch=1, text_len=6)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0]])
    with torch.no_grad():
        masked = model(**inputs, encoder_attention_mask=mask)
        truncated = model(
            **{**inputs, "encoder_hidden_states": inputs["encoder_hidden_states"][:, :, :3]},
        )
    torch.testing.assert_close(masked, truncated, rtol=1e-5, atol=1e-5)


def test_text_without_singleton_axis_is_accepted():
    model = tiny_model()
    inputs = tiny_inputs()
    with torch.no_grad():
        expected = model(**inputs)
        output = model(**{**inputs, "encoder_hidden_states": inputs["encoder_hidden_states"][:, 0]})
    torch.testing.assert_close(output, expected, rtol=0, atol=0)


def test_gradient_checkpointing_gives_the_same_gradients():
    def gradients(checkpointing: bool) -> dict[str, torch.Tensor]:
        model = tiny_model(seed=3).train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        inputs = tiny_inputs()
        inputs["timestep"] = torch.tensor([[0.0, 600.0, 600.0], [0.0, 200.0, 200.0]])
        loss = model(**inputs, num_cond_latents=1).pow(2).mean()
        loss.backward()
        return {name: param.grad.clone() for name, param in model.named_parameters()}

    plain = gradients(checkpointing=False)
    checkpointed = gradients(checkpointing=True)
    assert plain.keys() == checkpointed.keys()
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    assert all(grad.abs().sum() > 0 for grad in plain.values())


def test_gradient_checkpointing_recomputes_blocks():
    model = tiny_model().train()
    model.enable_gradient_checkpointing()
    calls = []
    model.blocks[0].register_forward_pre_hook(lambda *args: calls.append(1))
    model(**tiny_inputs()).sum().backward()
    assert len(calls) == 2


def test_bfloat16_weights_give_float32_output_close_to_float32():
    model = tiny_model()
    # Timesteps exactly representable in bfloat16: the model rounds them to its dtype, as the reference does.
    inputs = {**tiny_inputs(), "timestep": torch.tensor([256.0, 640.0])}
    with torch.no_grad():
        expected = model(**inputs)
        output = model.to(torch.bfloat16)(**inputs)
    assert output.dtype == torch.float32
    assert relative_error(output, expected) < 0.05


def test_published_config_flags_are_accepted():
    model = tiny_model(
        enable_flashattn2=True,
        enable_flashattn3=True,
        enable_xformers=True,
        bsa_params={"sparsity": 0.9375, "chunk_3d_shape_q": [4, 4, 4], "chunk_3d_shape_k": [4, 4, 4]},
        cp_split_hw=[1, 1],
    )
    with torch.no_grad():
        assert torch.isfinite(model(**tiny_inputs())).all()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(enable_bsa=True), "enable_bsa"),
        (dict(cp_split_hw=[2, 1]), "cp_split_hw"),
        (dict(patch_size=[2, 2, 2]), "patch_size"),
        (dict(hidden_size=66), "num_heads"),
        (dict(hidden_size=48), "divisible by 8"),
    ],
)
def test_unsupported_configs_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        LongCatVideoTransformer3DModel(**{**TINY_CONFIG, **overrides})


def test_unknown_attention_backend_is_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match="unknown attention backend 'xformers'"):
        model.set_attention_backend("xformers")
    model.set_attention_backend("native")
    assert model.attention_backend == "sdpa"


@pytest.mark.parametrize("backend", ["sdpa_cudnn", "sdpa_flash"])
def test_sdpa_held_to_one_kernel_is_sdpa_where_that_kernel_does_not_apply(backend):
    # On the CPU (and for float32 or a padding mask on a GPU) the held kernel does not apply: SDPA chooses.
    model = tiny_model(text_tokens_zero_pad=False)
    inputs = tiny_inputs() | {"encoder_attention_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])}
    with torch.no_grad():
        expected = model(**inputs)
        model.set_attention_backend(backend)
        output = model(**inputs)
    assert model.attention_backend == backend
    assert torch.equal(output, expected)


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="flash-attn is installed here")
def test_missing_flash_attention_is_a_clear_error():
    with pytest.raises(ValueError, match="flash_attn"):
        tiny_model().set_attention_backend("flash_attn2")


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(hidden_states=torch.zeros(2, 8, 3, 4, 6)), r"hidden_states: expected \[B, 16, T, H, W\]"),
        (dict(hidden_states=torch.zeros(2, 16, 3, 5, 6)), "multiples of the patch size"),
        (dict(hidden_states=torch.zeros(2, 16, 3, 4, 7)), "found 3x4x7"),
        (dict(timestep=torch.zeros(2, 4)), r"timestep: expected \[B\] or \[B, T\] = \[2, 3\]"),
        (dict(timestep=torch.zeros(3)), "timestep"),
        (dict(encoder_hidden_states=torch.zeros(2, 1, 5, 16)), "encoder_hidden_states"),
        (
            dict(encoder_attention_mask=torch.ones(2, 4)),
            r"encoder_attention_mask: expected \[B, L\] = \[2, 5\]",
        ),
        (dict(num_cond_latents=3), "num_cond_latents"),
    ],
)
def test_bad_inputs_are_clear_errors(change, message):
    model = tiny_model()
    with pytest.raises(ValueError, match=message), torch.no_grad():
        model(**{**tiny_inputs(), **change})


def test_empty_text_without_zero_pad_is_an_error():
    model = tiny_model(text_tokens_zero_pad=False)
    mask = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
    with pytest.raises(ValueError, match=r"samples \[1\] have no valid text token"), torch.no_grad():
        model(**tiny_inputs(), encoder_attention_mask=mask)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["sdpa_cudnn", "sdpa_flash", "flash_attn2", "flash_attn3"])
def test_flash_attention_matches_sdpa_on_gpu(backend):
    from longcat.model.attention import flash_attention_available

    if backend.startswith("flash_attn") and not flash_attention_available(backend):
        pytest.skip(f"{backend} is not installed")
    model = tiny_model().to("cuda", torch.bfloat16)
    inputs = {name: tensor.cuda() for name, tensor in tiny_inputs().items()}
    with torch.no_grad():
        model.set_attention_backend("sdpa")
        expected = model(**inputs)
        model.set_attention_backend(backend)
        output = model(**inputs)
    assert relative_error(output, expected) < 2e-2


class MatmulAttention:
    """softmax(q k^T / sqrt(d)) v with explicit matmuls, so that FlopCounterMode sees every attention FLOP."""

    name = "matmul"

    def __call__(self, query, key, value, key_mask=None):
        query, key, value = (tensor.transpose(1, 2) for tensor in (query, key, value))
        scores = query @ key.transpose(-1, -2) / query.shape[-1] ** 0.5
        return (scores.softmax(-1) @ value).transpose(1, 2)


def test_bench_flop_formula_matches_counted_flops():
    from torch.utils.flop_counter import FlopCounterMode

    from longcat.model.rope import rope_cos_sin

    bench_dit = load_bench("bench_dit")

    torch.manual_seed(0)
    block = LongCatSingleStreamBlock(hidden_size=64, num_heads=4, mlp_ratio=4, adaln_tembed_dim=32)
    block.attn.processor = block.cross_attn.processor = MatmulAttention()
    grid, text_tokens = (3, 2, 4), 7
    tokens = grid[0] * grid[1] * grid[2]
    x = torch.randn(1, tokens, 64, requires_grad=True)
    text = torch.randn(1, text_tokens, 64, requires_grad=True)
    t = torch.randn(1, grid[0], 32, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        block(x, text, t, rope_cos_sin(16, grid)).sum().backward()
    assert bench_dit.block_matmul_flops(block, tokens, text_tokens, grid[0]) == counter.get_total_flops()


def test_bench_block_path_runs_on_cpu_at_tiny_size():
    bench_dit = load_bench("bench_dit")
    result = bench_dit.bench_block(
        torch.device("cpu"),
        torch.bfloat16,
        dict(hidden_size=64, num_heads=4, mlp_ratio=4, adaln_tembed_dim=32),
        grid=(2, 2, 4),
        text_tokens=8,
        backend="sdpa",
        iters=2,
        warmup=1,
    )
    assert result["video_tokens"] == 16 and result["ffn_inner"] == 256
    assert result["ms_per_iter"] > 0 and result["tflop_per_iter"] > 0 and 0 <= result["mfu"] < 1
