"""The conda specs in envs/ carry the same packages and pins as pyproject.toml."""

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
# Only the process that drives the workflow uses these; rule environments never import them.
DRIVER_ONLY = {"snakemake-executor-plugin-slurm"}
ENV_PACKAGES = {"data", "gpu"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def _pyproject() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {_name(req): req.replace(" ", "") for req in project["dependencies"]}


def _pip_requirements(env_file: Path) -> dict[str, str]:
    spec = yaml.safe_load(env_file.read_text())
    pip = next(dep["pip"] for dep in spec["dependencies"] if isinstance(dep, dict) and "pip" in dep)
    return {_name(req): req.replace(" ", "") for req in pip}


def test_every_env_exists_with_python_311():
    assert {path.stem for path in (REPO / "envs").glob("*.yaml")} == ENV_PACKAGES
    for name in ENV_PACKAGES:
        spec = yaml.safe_load((REPO / "envs" / f"{name}.yaml").read_text())
        conda = [dep for dep in spec["dependencies"] if isinstance(dep, str)]
        assert "python =3.11" in conda, f"envs/{name}.yaml: expected python =3.11, found {conda}"


def test_env_pins_match_pyproject():
    wanted = _pyproject()
    for name in ENV_PACKAGES:
        for package, requirement in _pip_requirements(REPO / "envs" / f"{name}.yaml").items():
            assert package in wanted, f"envs/{name}.yaml: {requirement} is not a dependency in pyproject.toml"
            assert requirement == wanted[package], (
                f"envs/{name}.yaml: {requirement!r} differs from pyproject.toml's {wanted[package]!r}"
            )


def test_every_dependency_is_in_an_env():
    covered = set()
    for name in ENV_PACKAGES:
        covered |= set(_pip_requirements(REPO / "envs" / f"{name}.yaml"))
    missing = set(_pyproject()) - covered - DRIVER_ONLY
    assert not missing, (
        f"pyproject.toml dependencies missing from envs/data.yaml and envs/gpu.yaml: {sorted(missing)}"
    )


def test_gpu_env_contains_the_data_env():
    # GPU jobs read shard lists and decode video, so they need everything the data stage needs.
    data = _pip_requirements(REPO / "envs" / "data.yaml")
    gpu = _pip_requirements(REPO / "envs" / "gpu.yaml")
    assert set(data) <= set(gpu), sorted(set(data) - set(gpu))
