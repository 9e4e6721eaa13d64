"""load_dit / save_dit: the published `dit/` layout, strict loading, streaming, clear errors."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from longcat import LongCatVideoTransformer3DModel
from longcat.model import load_dit, save_dit
from longcat.model.loading import INDEX_NAME, WEIGHTS_NAME, parse_size

FIXTURES = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / "longcat_dit"
TINY_CONFIG = dict(hidden_size=64, depth=2, num_heads=4, caption_channels=32, adaln_tembed_dim=32)


def tiny_model(seed: int = 0) -> LongCatVideoTransformer3DModel:
    torch.manual_seed(seed)
    model = LongCatVideoTransformer3DModel(**TINY_CONFIG, text_tokens_zero_pad=True)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    return model


def tiny_inputs():
    generator = torch.Generator().manual_seed(0)
    return dict(
        hidden_states=torch.randn(1, 16, 2, 4, 4, generator=generator),
        timestep=torch.tensor([500.0]),
        encoder_hidden_states=torch.randn(1, 1, 5, 32, generator=generator),
    )


def assert_same_weights(model_a, model_b):
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert list(state_a) == list(state_b)
    for name, tensor in state_a.items():
        assert torch.equal(tensor, state_b[name]), name


def test_sharded_round_trip(tmp_path):
    model = tiny_model()
    save_dit(model, tmp_path / "dit", max_shard_size="40KB", dtype=torch.float32)

    index = json.loads((tmp_path / "dit" / INDEX_NAME).read_text())
    shard_files = sorted(set(index["weight_map"].values()))
    assert len(shard_files) > 1
    assert shard_files[0] == f"diffusion_pytorch_model-00001-of-{len(shard_files):05d}.safetensors"
    assert set(index["weight_map"]) == set(model.state_dict())
    assert not (tmp_path / "dit" / WEIGHTS_NAME).exists()
    config = json.loads((tmp_path / "dit" / "config.json").read_text())
    assert config["_class_name"] == "LongCatVideoTransformer3DModel"
    assert config["hidden_size"] == 64

    loaded = load_dit(tmp_path / "dit", dtype=torch.float32)
    assert_same_weights(model, loaded)
    assert all(isinstance(param, torch.nn.Parameter) and param.requires_grad for param in loaded.parameters())
    with torch.no_grad():
        torch.testing.assert_close(loaded(**tiny_inputs()), model(**tiny_inputs()), rtol=0, atol=0)

    # The same directory is what diffusers' own loader reads (model_index.json points here).
    via_diffusers = LongCatVideoTransformer3DModel.from_pretrained(tmp_path / "dit")
    assert_same_weights(model, via_diffusers)


def test_default_save_is_one_bfloat16_file_and_resave_removes_stale_shards(tmp_path):
    model = tiny_model()
    save_dit(model, tmp_path, max_shard_size=30_000)
    assert (tmp_path / INDEX_NAME).exists()
    save_dit(model, tmp_path)
    weight_files = sorted(path.name for path in tmp_path.glob("diffusion_pytorch_model*"))
    assert weight_files == [WEIGHTS_NAME]
    assert all(tensor.dtype == torch.bfloat16 for tensor in load_file(tmp_path / WEIGHTS_NAME).values())

    loaded = load_dit(tmp_path)
    assert {param.dtype for param in loaded.parameters()} == {torch.bfloat16}
    expected = {name: tensor.to(torch.bfloat16) for name, tensor in model.state_dict().items()}
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_loads_base_model_directory_and_reference_fixture(tmp_path):
    save_dit(tiny_model(), tmp_path / "dit", dtype=torch.float32)
    assert_same_weights(
        load_dit(tmp_path, dtype=torch.float32), load_dit(tmp_path / "dit", dtype=torch.float32)
    )

    fixture = load_dit(FIXTURES / "tiny_dit", dtype=torch.float32)
    reference = load_file(FIXTURES / "tiny_dit" / WEIGHTS_NAME)
    assert fixture.state_dict().keys() == reference.keys()
    assert fixture.config.text_tokens_zero_pad is True


def test_save_accepts_an_explicit_state_dict(tmp_path):
    model, other = tiny_model(seed=0), tiny_model(seed=1)
    save_dit(model, tmp_path, dtype=torch.float32, state_dict=other.state_dict())
    assert_same_weights(load_dit(tmp_path, dtype=torch.float32), other)


def _rewrite_weights(directory: Path, edit) -> None:
    state = load_file(directory / WEIGHTS_NAME)
    edit(state)
    save_file(state, directory / WEIGHTS_NAME)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda state: state.pop("blocks.1.ffn.w2.weight"), r"1 missing: blocks\.1\.ffn\.w2\.weight"),
        (
            lambda state: state.update({"blocks.2.attn.qkv.weight": torch.zeros(192, 64)}),
            r"1 unexpected: blocks\.2\.attn\.qkv\.weight \(diffusion_pytorch_model\.safetensors\)",
        ),
        (
            lambda state: state.update({"final_layer.linear.weight": torch.zeros(32, 64)}),
            r"final_layer\.linear\.weight \(diffusion_pytorch_model\.safetensors\): "
            r"expected \[64, 64\], found \[32, 64\]",
        ),
    ],
)
def test_strict_load_names_the_tensors(tmp_path, edit, message):
    save_dit(tiny_model(), tmp_path)
    _rewrite_weights(tmp_path, edit)
    with pytest.raises(ValueError, match=message) as error:
        load_dit(tmp_path)
    assert str(tmp_path) in str(error.value)


def test_shard_missing_from_index_is_an_error(tmp_path):
    save_dit(tiny_model(), tmp_path, max_shard_size=30_000)
    next(tmp_path.glob("diffusion_pytorch_model-00002-of-*.safetensors")).unlink()
    with pytest.raises(FileNotFoundError, match="lists shards that do not exist"):
        load_dit(tmp_path)


def test_config_of_another_model_family_is_refused(tmp_path):
    from diffusers import FluxTransformer2DModel, WanTransformer3DModel

    wan = WanTransformer3DModel(
        num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, text_dim=16,
        freq_dim=256, ffn_dim=32, num_layers=1, rope_max_seq_len=32,
    )  # fmt: skip
    wan.save_pretrained(tmp_path / "wan")
    with pytest.raises(ValueError, match="_class_name is 'WanTransformer3DModel'.*another model family"):
        load_dit(tmp_path / "wan")

    flux = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=16, axes_dims_rope=(2, 2, 4),
    )  # fmt: skip
    flux.save_config(tmp_path / "flux")
    config = json.loads((tmp_path / "flux" / "config.json").read_text())
    del config["_class_name"]
    (tmp_path / "flux" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="are not LongCat-Video DiT config keys"):
        load_dit(tmp_path / "flux")


def test_incomplete_or_broken_config_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"in_channels": 16}))
    with pytest.raises(ValueError, match=r"missing required keys \['hidden_size'"):
        load_dit(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_dit(tmp_path)


def test_missing_directory_or_weights_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no DiT found"):
        load_dit(tmp_path / "absent")
    tiny_model().save_config(tmp_path)
    with pytest.raises(FileNotFoundError, match="no DiT weights"):
        load_dit(tmp_path)


def test_parse_size():
    assert parse_size("5GB") == 5_000_000_000
    assert parse_size("10GiB") == 10 * 1024**3
    assert parse_size("500MB") == 500_000_000
    assert parse_size(123) == 123
    with pytest.raises(ValueError, match="max_shard_size"):
        parse_size("lots")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_loading_does_not_hold_the_model_twice(tmp_path):
    """A fresh process loading ~150 MB of float32 weights, then touching them all, peaks under 1.5x that."""
    with torch.device("meta"):
        model = LongCatVideoTransformer3DModel(hidden_size=512, depth=6, num_heads=4, caption_channels=64)
    model.to_empty(device="cpu")
    for param in model.parameters():
        param.data.fill_(0.5)
    weight_bytes = sum(p.numel() * 4 for p in model.parameters())
    save_dit(model, tmp_path, max_shard_size="20MB", dtype=torch.float32)
    del model
    script = textwrap.dedent(
        f"""
        import re, torch
        from longcat.model import load_dit

        def status_bytes(key):
            return int(re.search(key + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024

        open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) left by the imports
        before = status_bytes("VmRSS")
        model = load_dit({str(tmp_path)!r}, dtype=torch.float32)
        checksum = sum(float(param.sum()) for param in model.parameters())
        print(status_bytes("VmHWM") - before, checksum)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    peak_growth = int(result.stdout.split()[0])
    assert weight_bytes > 100e6
    assert weight_bytes * 0.9 < peak_growth < 1.5 * weight_bytes, (peak_growth, weight_bytes)
