"""Load and save the DiT in the published `dit/` layout: `config.json` plus safetensors weights.

Weights are either one `diffusion_pytorch_model.safetensors` or shards named
`diffusion_pytorch_model-0000K-of-0000N.safetensors` listed by
`diffusion_pytorch_model.safetensors.index.json` (the layout diffusers writes and reads). Loading builds
the model on the meta device, checks every tensor name and shape from the file headers, then streams the
shards in one at a time with `assign=True`, so the 13.6B model is never held twice in host memory.
"""

import inspect
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path

import diffusers
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from longcat.files import atomic_path, atomic_write_text

from .transformer import LongCatVideoTransformer3DModel

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
MODEL_CLASS_NAME = LongCatVideoTransformer3DModel.__name__
# Keys without which a config.json cannot describe this architecture (defaults would silently build 13.6B).
REQUIRED_CONFIG_KEYS = ("hidden_size", "depth", "num_heads", "caption_channels", "adaln_tembed_dim")
_SHARD_PATTERN = re.compile(r"diffusion_pytorch_model(-\d{5}-of-\d{5})?\.safetensors")
_MAX_NAMES_IN_ERROR = 8


def resolve_dit_dir(path: str | Path) -> Path:
    """The directory holding the DiT's config.json: `path` itself or its `dit/` subfolder."""
    path = Path(path)
    for candidate in (path, path / "dit"):
        if (candidate / CONFIG_NAME).is_file():
            return candidate
    raise FileNotFoundError(
        f"no DiT found at {path}: expected {path / CONFIG_NAME} or {path / 'dit' / CONFIG_NAME}"
    )


def read_dit_config(dit_dir: str | Path) -> dict:
    """Read and check `config.json`: it must describe a LongCat-Video DiT, not another model family."""
    config_path = Path(dit_dir) / CONFIG_NAME
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path}: not valid JSON ({err})") from err
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: expected a JSON object, found {type(config).__name__}")
    class_name = config.get("_class_name")
    if class_name is not None and class_name != MODEL_CLASS_NAME:
        raise ValueError(
            f"{config_path}: _class_name is {class_name!r}, expected {MODEL_CLASS_NAME!r}; "
            "this is the config of another model family"
        )
    accepted = set(inspect.signature(LongCatVideoTransformer3DModel.__init__).parameters) - {"self"}
    unknown = sorted(key for key in config if not key.startswith("_") and key not in accepted)
    if unknown:
        raise ValueError(
            f"{config_path}: keys {unknown} are not LongCat-Video DiT config keys "
            f"(expected a subset of {sorted(accepted)}); is this the config of another model family?"
        )
    missing = [key for key in REQUIRED_CONFIG_KEYS if key not in config]
    if missing:
        raise ValueError(f"{config_path}: missing required keys {missing}")
    return config


def weight_files(dit_dir: str | Path) -> list[Path]:
    """The safetensors files of a `dit/` directory, in index order when sharded."""
    dit_dir = Path(dit_dir)
    index_path = dit_dir / INDEX_NAME
    if index_path.is_file():
        if (dit_dir / WEIGHTS_NAME).is_file():
            logger.warning(
                "%s has both %s and %s; reading the shards of the index", dit_dir, INDEX_NAME, WEIGHTS_NAME
            )
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{index_path}: expected a JSON object with a 'weight_map' ({err!r})") from err
        files = [dit_dir / name for name in dict.fromkeys(weight_map.values())]
        absent = [str(path) for path in files if not path.is_file()]
        if absent:
            raise FileNotFoundError(f"{index_path} lists shards that do not exist: {absent}")
        return files
    if (dit_dir / WEIGHTS_NAME).is_file():
        return [dit_dir / WEIGHTS_NAME]
    raise FileNotFoundError(
        f"no DiT weights in {dit_dir}: expected {WEIGHTS_NAME} or {INDEX_NAME} with its shards"
    )


def _header_shapes(files: list[Path]) -> dict[str, tuple[Path, tuple[int, ...]]]:
    """Tensor name -> (file, shape), read from the safetensors headers only."""
    found: dict[str, tuple[Path, tuple[int, ...]]] = {}
    for path in files:
        with safe_open(path, framework="pt", device="cpu") as handle:
            for name in handle.keys():
                if name in found:
                    raise ValueError(f"tensor {name!r} appears in both {found[name][0]} and {path}")
                found[name] = (path, tuple(handle.get_slice(name).get_shape()))
    return found


def _name_list(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_NAMES_IN_ERROR])
    more = len(names) - _MAX_NAMES_IN_ERROR
    return f"{shown} (and {more} more)" if more > 0 else shown


def check_state_dict_match(
    expected: Mapping[str, tuple[int, ...]],
    found: Mapping[str, tuple[Path, tuple[int, ...]]],
    where: Path,
) -> None:
    """One error naming every missing, unexpected and mis-shaped tensor; silent when all match."""
    missing = [name for name in expected if name not in found]
    unexpected = [f"{name} ({found[name][0].name})" for name in found if name not in expected]
    mismatched = [
        f"{name} ({found[name][0].name}): expected {list(shape)}, found {list(found[name][1])}"
        for name, shape in expected.items()
        if name in found and tuple(found[name][1]) != tuple(shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_name_list(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_name_list(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} with wrong shapes: {_name_list(mismatched)}")
    if problems:
        raise ValueError(f"DiT checkpoint {where} does not match its config.json: " + "; ".join(problems))


def load_dit(
    path: str | Path,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
) -> LongCatVideoTransformer3DModel:
    """Load a LongCat-Video DiT from a `dit/` directory (or a base-model directory holding `dit/`).

    Strict: any missing, unexpected or mis-shaped tensor fails before a byte of weights is read.
    Floating-point weights are cast to `dtype` and placed on `device` shard by shard.
    """
    dit_dir = resolve_dit_dir(path)
    config = read_dit_config(dit_dir)
    files = weight_files(dit_dir)
    with torch.device("meta"):
        model = LongCatVideoTransformer3DModel.from_config(config)
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    check_state_dict_match(expected, _header_shapes(files), dit_dir)

    for path_ in files:
        logger.info("loading %s", path_)
        with safe_open(path_, framework="pt", device="cpu") as handle:
            shard = {}
            for name in handle.keys():
                tensor = handle.get_tensor(name)
                target_dtype = dtype if tensor.is_floating_point() else tensor.dtype
                shard[name] = tensor.to(device=device, dtype=target_dtype)
        model.load_state_dict(shard, strict=False, assign=True)
        del shard

    left_on_meta = [
        name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta
    ]
    if left_on_meta:
        raise ValueError(f"DiT {dit_dir}: tensors never loaded: {_name_list(left_on_meta)}")
    return model.eval()


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string such as '5GB', '500MB', '10GiB'."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", str(size), flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"max_shard_size: expected bytes or a size like '5GB', found {size!r}")
    number, prefix, binary = match.groups()
    base = 1024 if binary else 1000
    return int(float(number) * base ** " KMGT".index(prefix.upper() or " "))


def _write_json(path: Path, payload: dict) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def save_dit(
    model: LongCatVideoTransformer3DModel,
    directory: str | Path,
    max_shard_size: int | str = "5GB",
    dtype: torch.dtype = torch.bfloat16,
    state_dict: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write `config.json` and the weights in the published layout, floating tensors cast to `dtype`.

    `state_dict` replaces `model.state_dict()` when given (e.g. a full state dict gathered from FSDP
    shards; it must hold plain tensors, not DTensors). One file when everything fits in `max_shard_size`,
    otherwise shards plus the index. Each file is written atomically; weight files of an earlier save that
    the new one does not use are removed.
    """
    from torch.distributed.tensor import DTensor

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = dict(model.state_dict() if state_dict is None else state_dict)
    sharded = [name for name, tensor in state.items() if isinstance(tensor, DTensor)]
    if sharded:
        raise TypeError(f"save_dit needs full tensors, found DTensors: {_name_list(sharded)}")

    limit = parse_size(max_shard_size)
    shards: list[list[str]] = [[]]
    shard_bytes = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * (dtype.itemsize if tensor.is_floating_point() else tensor.element_size())
        if shards[-1] and shard_bytes + nbytes > limit:
            shards.append([])
            shard_bytes = 0
        shards[-1].append(name)
        shard_bytes += nbytes

    if len(shards) == 1:
        file_names = [WEIGHTS_NAME]
    else:
        file_names = [
            f"diffusion_pytorch_model-{i:05d}-of-{len(shards):05d}.safetensors"
            for i in range(1, len(shards) + 1)
        ]
    weight_map = {}
    total_size = 0
    for file_name, names in zip(file_names, shards, strict=True):
        tensors = {}
        for name in names:
            tensor = state[name].detach()
            target_dtype = dtype if tensor.is_floating_point() else tensor.dtype
            tensors[name] = tensor.to(device="cpu", dtype=target_dtype, copy=True).contiguous()
            total_size += tensors[name].numel() * tensors[name].element_size()
            weight_map[name] = file_name
        with atomic_path(directory / file_name) as tmp:
            save_file(tensors, tmp, metadata={"format": "pt"})
        del tensors

    config = {key: value for key, value in dict(model.config).items() if not key.startswith("_")}
    config = {"_class_name": MODEL_CLASS_NAME, "_diffusers_version": diffusers.__version__, **config}
    _write_json(directory / CONFIG_NAME, config)
    if len(shards) > 1:
        _write_json(
            directory / INDEX_NAME, {"metadata": {"total_size": total_size}, "weight_map": weight_map}
        )
    else:
        (directory / INDEX_NAME).unlink(missing_ok=True)
    for stale in directory.iterdir():
        if _SHARD_PATTERN.fullmatch(stale.name) and stale.name not in file_names:
            stale.unlink()
    return directory
