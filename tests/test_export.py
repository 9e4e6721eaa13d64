"""Export: a trained DiT written into a self-contained published layout that both loaders read back."""

import json

import diffusers
import pytest
import torch
from safetensors import safe_open

from longcat.basemodel.layout import SUBFOLDERS
from longcat.basemodel.loader import load_components
from longcat.basemodel.prepare import prepare_base_model
from longcat.export import export_model
from longcat.pipeline import LongCatVideoPipeline
from longcat.settings import BaseModel


@pytest.fixture(scope="module")
def trained(tiny_base_model):
    """The base components with the DiT's weights moved, as training would."""
    components = load_components(tiny_base_model)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for parameter in components["dit"].parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return components


def sample(pipe, seed=0):
    return pipe(
        "a red square moving",
        num_frames=5,
        height=32,
        width=32,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(seed),
        max_sequence_length=16,
        output_type="latent",
    ).frames


def _dit_dtypes(dit_dir):
    dtypes = set()
    for path in dit_dir.glob("*.safetensors"):
        with safe_open(path, framework="pt") as handle:
            dtypes.update(handle.get_tensor(name).dtype for name in handle.keys())
    return dtypes


def test_export_loads_back_and_samples_like_the_model_in_memory(tiny_base_model, trained, tmp_path):
    out = export_model(
        trained["dit"], tiny_base_model, tmp_path / "export", dtype=torch.float32, max_shard_size="20KB"
    )

    assert len(list((out / "dit").glob("diffusion_pytorch_model-*-of-*.safetensors"))) > 1
    assert (out / "dit" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "LongCatVideoPipeline"]
    assert index["vae"] == ["diffusers", "AutoencoderKLWan"]

    in_memory = LongCatVideoPipeline(**trained)
    reloaded = LongCatVideoPipeline.from_pretrained(out)
    torch.testing.assert_close(sample(reloaded), sample(in_memory), rtol=0, atol=0)
    base = LongCatVideoPipeline.from_pretrained(tiny_base_model)
    assert not torch.equal(sample(base), sample(in_memory))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_export_is_self_contained(tiny_base_model, trained, tmp_path):
    # A Hugging Face cache holds files as links into a blob store, and kind dir links the subfolders:
    # the export still holds real files.
    snapshot, blobs = tmp_path / "snapshot", tmp_path / "blobs"
    blobs.mkdir()
    for source in tiny_base_model.rglob("*"):
        target = snapshot / source.relative_to(tiny_base_model)
        if source.is_dir():
            target.mkdir(parents=True)
        else:
            blob = blobs / f"{len(list(blobs.iterdir())):04d}"
            blob.write_bytes(source.read_bytes())
            target.symlink_to(blob)
    linked = prepare_base_model(BaseModel("dir", None, str(snapshot), None), tmp_path / "linked")
    out = export_model(trained["dit"], linked, tmp_path / "export")
    for name in SUBFOLDERS:
        assert (out / name).is_dir() and not (out / name).is_symlink()
        for path in (out / name).rglob("*"):
            assert not path.is_symlink(), path
    for name in ("vae", "text_encoder", "tokenizer", "scheduler"):
        for source in (tiny_base_model / name).iterdir():
            assert (out / name / source.name).read_bytes() == source.read_bytes()
    vae_config = out / "vae" / "config.json"
    assert vae_config.stat().st_ino == (snapshot / "vae" / "config.json").resolve().stat().st_ino


def test_default_export_is_bfloat16_and_leaves_the_model_alone(tiny_base_model, trained, tmp_path):
    out = export_model(trained["dit"], tiny_base_model, tmp_path / "export")
    assert _dit_dtypes(out / "dit") == {torch.bfloat16}
    assert trained["dit"].dtype == torch.float32
    reloaded = LongCatVideoPipeline.from_pretrained(out, torch_dtype=torch.bfloat16)
    assert reloaded.dit.dtype == torch.bfloat16
    assert torch.isfinite(sample(reloaded)).all()


def test_export_from_a_state_dict(tiny_base_model, trained, tmp_path):
    state = {name: tensor.clone() for name, tensor in trained["dit"].state_dict().items()}
    out = export_model(state, tiny_base_model, tmp_path / "export", dtype=torch.float32)
    reloaded = LongCatVideoPipeline.from_pretrained(out)
    torch.testing.assert_close(sample(reloaded), sample(LongCatVideoPipeline(**trained)), rtol=0, atol=0)


def test_state_dict_with_a_missing_tensor_fails_before_writing(tiny_base_model, trained, tmp_path):
    state = dict(trained["dit"].state_dict())
    del state["blocks.1.attn.qkv.weight"]
    state["blocks.9.extra"] = torch.zeros(1)
    pattern = r"(?s)does not match .*dit/config\.json.*Missing.*blocks\.1\.attn\.qkv\.weight.*Unexpected"
    with pytest.raises(ValueError, match=pattern):
        export_model(state, tiny_base_model, tmp_path / "export")
    assert not list(tmp_path.iterdir())


def test_diffusers_loads_the_export_with_trust_remote_code(tiny_base_model, trained, tmp_path):
    out = export_model(trained["dit"], tiny_base_model, tmp_path / "export", dtype=torch.float32)
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        diffusers.DiffusionPipeline.from_pretrained(out)
    pipe = diffusers.DiffusionPipeline.from_pretrained(out, trust_remote_code=True)
    assert type(pipe) is LongCatVideoPipeline
    torch.testing.assert_close(sample(pipe), sample(LongCatVideoPipeline(**trained)), rtol=0, atol=0)


def test_the_caption_length_it_trained_with_is_recorded_and_both_loaders_pad_to_it(
    tiny_base_model, trained, tmp_path
):
    out = export_model(trained["dit"], tiny_base_model, tmp_path / "export", max_sequence_length=16)
    assert json.loads((out / "model_index.json").read_text())["max_sequence_length"] == 16
    for pipe in (
        LongCatVideoPipeline.from_pretrained(out),
        diffusers.DiffusionPipeline.from_pretrained(out, trust_remote_code=True),
    ):
        assert pipe.config.max_sequence_length == 16
        text, mask, negative, _ = pipe.encode_prompt("a red square moving")
        assert text.shape[2] == negative.shape[2] == mask.shape[1] == 16
        # A call can still ask for another length.
        assert pipe.encode_prompt("a red square moving", max_sequence_length=8)[0].shape[2] == 8
    # A model that records none (the published base model) pads to the official 512.
    assert LongCatVideoPipeline.from_pretrained(tiny_base_model).config.max_sequence_length == 512
