"""The published layout: the tiny base model written and read back, links for dir, errors, text encoding."""

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler
from safetensors.torch import load_file
from transformers import AutoTokenizer, UMT5EncoderModel

from longcat.basemodel.layout import SUBFOLDERS, BaseModelError, check_layout, resolve
from longcat.basemodel.loader import load_components
from longcat.basemodel.prepare import prepare_base_model
from longcat.basemodel.tiny import WAN21_LATENTS_MEAN, write_tiny_base_model
from longcat.config import load_config
from longcat.data.demo import DEMO_CAPTIONS
from longcat.encoders.text import encode_prompts, prompt_clean
from longcat.flow import pad_captions
from longcat.model import LongCatVideoTransformer3DModel
from longcat.paths import Layout
from longcat.settings import BaseModel, TinyModel, load_settings

REPO = Path(__file__).resolve().parent.parent
TINY = TinyModel(**TINY_MODEL)


def dir_model(path) -> BaseModel:
    return BaseModel(kind="dir", tiny=TINY, dir=str(path), hf=None)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_base_model(tmp_path_factory.mktemp("base") / "base_model", TINY)


@pytest.fixture(scope="module")
def components(tiny_dir):
    return load_components(tiny_dir)


def _weights(folder: Path) -> dict:
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


def test_tiny_base_model_has_the_published_layout(tiny_dir, components):
    check_layout(tiny_dir)
    assert {p.name for p in tiny_dir.iterdir()} >= {*SUBFOLDERS, "model_index.json", "SOURCE.json"}
    assert isinstance(components["dit"], LongCatVideoTransformer3DModel)
    assert isinstance(components["vae"], AutoencoderKLWan)
    assert isinstance(components["text_encoder"], UMT5EncoderModel)
    assert isinstance(components["scheduler"], FlowMatchEulerDiscreteScheduler)
    assert components["scheduler"].config.shift == 12.0

    dit_config = components["dit"].config
    assert (dit_config.hidden_size, dit_config.depth, dit_config.num_heads) == (64, 2, 4)
    assert dit_config.caption_channels == components["text_encoder"].config.d_model == 32
    assert dit_config.cp_split_hw is None and dit_config.text_tokens_zero_pad

    vae = components["vae"]
    assert list(vae.config.latents_mean) == WAN21_LATENTS_MEAN and vae.config.z_dim == 16
    with torch.no_grad():
        latents = vae.encode(torch.zeros(1, 3, 9, 32, 48)).latent_dist.mode()
    assert latents.shape == (1, 16, 3, 4, 6)  # 4x temporal, 8x spatial, as the Wan 2.1 VAE


def test_tiny_tokenizer_loads_with_autotokenizer_as_t5(tiny_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir / "tokenizer")
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    encoded = tokenizer(["a red square", "zebra ¿"], padding="max_length", max_length=12, truncation=True)
    for ids, mask in zip(encoded.input_ids, encoded.attention_mask, strict=True):
        length = sum(mask)
        assert ids[length - 1] == tokenizer.eos_token_id and all(i == 0 for i in ids[length:])
    assert tokenizer.decode(tokenizer("a red square").input_ids, skip_special_tokens=True) == "a red square"
    # Its fixed corpus holds the demo's captions: they tokenize without unknown pieces.
    for caption in DEMO_CAPTIONS:
        assert tokenizer.unk_token_id not in tokenizer(prompt_clean(caption)).input_ids, caption


def test_tiny_base_model_is_deterministic_for_a_seed(tiny_dir, tmp_path):
    again = write_tiny_base_model(tmp_path / "again", TINY)
    other_seed = write_tiny_base_model(tmp_path / "other", dataclasses.replace(TINY, seed=1))
    for name in ("dit", "vae", "text_encoder"):
        first, second = _weights(tiny_dir / name), _weights(again / name)
        assert first.keys() == second.keys()
        assert all(torch.equal(first[key], second[key]) for key in first), name
    tokenizer_file = "tokenizer/tokenizer.json"
    assert (tiny_dir / tokenizer_file).read_bytes() == (again / tokenizer_file).read_bytes()
    first, other = _weights(tiny_dir / "dit"), _weights(other_seed / "dit")
    assert any(not torch.equal(first[key], other[key]) for key in first)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_load_components_loads_only_what_is_asked(tiny_dir):
    loaded = load_components(tiny_dir, components=["tokenizer", "scheduler"], dtype=torch.bfloat16)
    assert set(loaded) == {"tokenizer", "scheduler"}
    dit = load_components(tiny_dir, components=["dit"], dtype=torch.bfloat16)["dit"]
    assert dit.dtype == torch.bfloat16


@pytest.mark.parametrize("missing", ["vae", "tokenizer", "dit"])
def test_missing_subfolder_is_named(tiny_dir, tmp_path, missing):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in SUBFOLDERS:
        if name != missing:
            (broken / name).symlink_to(tiny_dir / name)
    with pytest.raises(BaseModelError, match=rf"{broken}: missing {missing}/"):
        load_components(broken)
    with pytest.raises(BaseModelError, match=rf"missing {missing}/"):
        prepare_base_model(dir_model(broken), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_subfolder_without_its_config_is_named(tiny_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in SUBFOLDERS:
        (broken / name).symlink_to(tiny_dir / name)
    (broken / "scheduler").unlink()
    (broken / "scheduler").mkdir()
    with pytest.raises(BaseModelError, match="scheduler/ has none of scheduler_config.json"):
        check_layout(broken)


def test_dir_kind_links_the_source_and_loads_the_same_model(tiny_dir, components, tmp_path):
    config = {**load_config(), "results": str(tmp_path / "results")}
    config["base_model"] = {"kind": "dir", "dir": str(tiny_dir)}
    settings = load_settings(config)
    out = prepare_base_model(settings.base_model, Layout.from_settings(settings).base_model)
    assert out.parent == tmp_path / "results" / "base_model"
    for name in SUBFOLDERS:
        assert (out / name).is_symlink() and (out / name).resolve() == (tiny_dir / name).resolve()
    assert json.loads((out / "SOURCE.json").read_text()) == {"kind": "dir", "path": str(tiny_dir.resolve())}
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "LongCatVideoPipeline"]

    linked = load_components(out, components=["dit"])["dit"]
    original = components["dit"].state_dict()
    assert all(torch.equal(tensor, original[name]) for name, tensor in linked.state_dict().items())

    # Materialising again replaces the directory in one step.
    prepare_base_model(settings.base_model, out)
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"kind": "dir"}, "base_model.dir: expected a directory"),
        ({"kind": "dir", "dir": "/nonexistent/model"}, "/nonexistent/model: not a directory"),
        ({"kind": "hf", "hf": None}, "base_model.hf.id: expected"),
        ({"kind": "tiny"}, "tiny has no source"),
        ({"kind": "civitai"}, "expected one of tiny, dir, hf, found 'civitai'"),
    ],
)
def test_resolve_names_the_bad_setting(section, message):
    with pytest.raises(BaseModelError, match=message):
        resolve(BaseModel(**{"tiny": TINY, "dir": None, "hf": None, **section}))


def test_base_model_rule_writes_the_tiny_model(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"results: {tmp_path / 'results'}\n")
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
         "--configfile", str(REPO / "config" / "config.yaml"), str(config), "--cores", "1", "base_model"],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    (out,) = (tmp_path / "results" / "base_model").iterdir()
    check_layout(out)
    assert json.loads((out / "SOURCE.json").read_text())["kind"] == "tiny"


def test_base_model_params_hold_only_the_configured_kind():
    def identity(config):
        return load_settings(config).base_model.identity()

    hf = {
        "kind": "hf",
        "hf": {"id": "meituan-longcat/LongCat-Video", "revision": "main"},
        "tiny": TINY_MODEL,
    }
    config = {**load_config(), "base_model": hf, "sample": {"prompts": ["x"]}}
    edited = {
        **config,
        "base_model": {**hf, "tiny": {**TINY_MODEL, "depth": 3}},
        "sample": {"prompts": ["y"]},
    }
    assert identity(config) == identity(edited) == {"kind": "hf", "hf": hf["hf"]}

    tiny = {
        **load_config(),
        "base_model": {"kind": "tiny", "tiny": TINY_MODEL},
        "demo": {"num_clips": 3, "seed": 0},
    }
    params = identity(tiny)
    assert params == {"kind": "tiny", "tiny": TINY_MODEL}
    # The tiny tokenizer learns a fixed corpus: neither the demo nor the source is part of the model.
    real = {**tiny, "demo": None, "source": {"kind": "s3", "bucket": "b"}}
    assert identity(real) == identity({**tiny, "demo": {"num_clips": 30, "seed": 1}}) == params


def test_prompt_clean_unescapes_twice_and_collapses_whitespace():
    assert prompt_clean("  a &amp;amp; b\n\t c  ") == "a & b c"
    assert prompt_clean("&lt;b&gt;bold&lt;/b&gt;") == "<b>bold</b>"
    if importlib.util.find_spec("ftfy"):
        assert prompt_clean("cafÃ© at night") == "café at night"  # mojibake repaired


def test_encode_prompts_gives_unpadded_and_padded_forms(components):
    tokenizer, text_encoder = components["tokenizer"], components["text_encoder"]
    long = "a red square moving across a blue background, then a green circle bouncing on a white floor"
    prompts = [long, "", "a   green circle"]
    embeddings = encode_prompts(tokenizer, text_encoder, prompts, max_tokens=24)

    lengths = [min(len(tokenizer(prompt_clean(p)).input_ids), 24) for p in prompts]
    assert lengths[0] == 24  # the long caption is truncated, end-of-sequence kept
    assert [e.shape for e in embeddings.unpadded] == [(n, 32) for n in lengths]
    assert embeddings.padded.shape == (3, 1, 24, 32) and embeddings.mask.shape == (3, 24)
    assert embeddings.mask.sum(dim=1).tolist() == lengths
    assert tokenizer(prompts[:1], max_length=24, truncation=True).input_ids[0][-1] == tokenizer.eos_token_id
    padded, mask = pad_captions(embeddings.unpadded, 24)
    torch.testing.assert_close(padded, embeddings.padded)
    assert torch.equal(mask, embeddings.mask)

    # A caption's embedding does not depend on the rest of its batch.
    alone = encode_prompts(tokenizer, text_encoder, [prompts[2]], max_tokens=24).unpadded[0]
    torch.testing.assert_close(alone, embeddings.unpadded[2], rtol=1e-5, atol=1e-6)

    truncated = encode_prompts(tokenizer, text_encoder, [prompts[0]], max_tokens=4)
    assert truncated.unpadded[0].shape == (4, 32)


def test_pad_captions_names_the_bad_row():
    with pytest.raises(ValueError, match="row 1: 5 tokens exceed max_tokens=4"):
        pad_captions([torch.zeros(2, 8), torch.zeros(5, 8)], 4)
    with pytest.raises(ValueError, match=r"row 1: expected an embedding \[L, 8\]"):
        pad_captions([torch.zeros(2, 8), torch.zeros(2, 6)], 4)
    with pytest.raises(TypeError, match="single string"):
        encode_prompts(None, None, "a prompt", 8)


def test_reference_dit_loads_through_the_same_loader(tiny_dir, tmp_path):
    fixture = REPO.parent / "shared" / "fixtures" / "longcat_dit" / "tiny_dit"
    if not fixture.is_dir():
        pytest.skip(f"reference fixture not found at {fixture}")
    assembled = tmp_path / "assembled"
    assembled.mkdir()
    (assembled / "dit").symlink_to(fixture)
    for name in SUBFOLDERS[1:]:
        (assembled / name).symlink_to(tiny_dir / name)
    dit = load_components(assembled, components=["dit"])["dit"]
    assert dit.config.enable_flashattn2 and dit.config.caption_channels == 32
    reference = load_file(fixture / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(tensor, reference[name]) for name, tensor in dit.state_dict().items())
