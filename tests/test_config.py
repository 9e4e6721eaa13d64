"""Config loading and checks: the schema, one-line errors before any job, and refused credentials."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from longcat.config import ConfigError, check_config, load_config, load_yaml, merge, schema_errors

REPO = Path(__file__).resolve().parent.parent
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def _snakemake_dry_run(workdir: Path, *configfiles: Path, target: str = "metadata"):
    command = [sys.executable, "-m", "snakemake", target, "-n", "-s", str(REPO / "Snakefile")]
    command += ["--directory", str(workdir), "--configfile", *map(str, configfiles)]
    # Snakemake logs to both streams; the tests read them together.
    return subprocess.run(
        command, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300
    )


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_both_shipped_configs_are_valid():
    demo = load_config()
    real = load_config(REPO / "config" / "longcat-13b.yaml")
    assert demo["source"] == {**demo["source"], "kind": "local", "path": "results/demo_clips"}
    assert demo["demo"] == {"num_clips": 12, "seed": 0}
    assert real["demo"] is None
    assert real["source"]["kind"] == "s3"
    assert real["base_model"] == {**real["base_model"], "kind": "hf"}
    assert real["base_model"]["hf"]["id"] == "meituan-longcat/LongCat-Video"
    assert real["frames"]["num_frames"] == 93 and real["frames"]["fps"] == 15
    assert [480, 832] in real["frames"]["buckets"] and [832, 480] in real["frames"]["buckets"]
    assert all(side % 16 == 0 for bucket in real["frames"]["buckets"] for side in bucket)
    assert real["train"]["gpus"] == 8 and real["train"]["mixed_precision"] == "bf16"
    assert real["train"]["checkpointing_steps"] == 2500
    assert real["shards"]["size"] == 1000


def test_only_the_real_job_names_the_hub_model():
    for path in [*REPO.glob("config/*.yaml"), *REPO.glob("rules/*.smk"), REPO / "Snakefile"]:
        if path.name != "longcat-13b.yaml":
            assert "meituan-longcat/LongCat-Video" not in path.read_text(), path


def test_every_key_of_the_default_is_documented():
    schema = load_yaml(REPO / "config" / "schema.yaml")

    def walk(config, node, where):
        for key, value in config.items():
            prop = node.get("properties", {}).get(key)
            assert prop is not None, f"{where}{key} is not in config/schema.yaml"
            assert prop.get("description") or "$ref" in prop, f"{where}{key} has no description"
            if isinstance(value, dict):
                walk(value, prop, f"{where}{key}.")

    for path in REPO.glob("config/*.yaml"):
        if path.name != "schema.yaml":
            walk(load_yaml(path), schema, "")


def test_merge_is_deep_like_snakemake():
    merged = merge({"train": {"gpus": 0, "seed": 1}, "a": [1]}, {"train": {"gpus": 8}, "a": [2]})
    assert merged == {"train": {"gpus": 8, "seed": 1}, "a": [2]}


@pytest.mark.parametrize(
    "override, line",
    [
        ({"train": {"learning_rate": "fast"}}, "train.learning_rate: expected type number, found 'fast'"),
        ({"source": {"kind": "ftp"}}, "source.kind: expected one of 'local', 's3', found 'ftp'"),
        ({"source": {"kind": "s3"}}, "source.bucket: required key missing"),
        ({"frames": {"buckets": [[480, 830]]}}, "frames.buckets[0][1]: expected multipleOf 16, found 830"),
        ({"trian": {"gpus": 8}}, "trian: unknown key"),
        ({"train": {"gpu": 8}}, "train.gpu: unknown key"),
    ],
)
def test_bad_values_name_the_key(override, line):
    config = merge(load_yaml(REPO / "config" / "config.yaml"), override)
    assert schema_errors(config)[0].startswith(line)
    with pytest.raises(ConfigError, match="see schema.yaml"):
        check_config(config)


@pytest.mark.parametrize("key", ["aws_access_key_id", "aws_secret_access_key", "AWS_SECRET_ACCESS_KEY"])
def test_credentials_are_refused_without_echo(key):
    config = merge(
        load_yaml(REPO / "config" / "config.yaml"), {"source": {"kind": "s3", "bucket": "b", key: SECRET}}
    )
    with pytest.raises(ConfigError) as error:
        check_config(config)
    message = str(error.value)
    assert f"source.{key}" in message
    assert "environment" in message and "~/.aws" in message and "role" in message
    assert SECRET not in message


def test_credentials_in_a_list_are_refused():
    with pytest.raises(ConfigError, match=r"extra\[0\]\.aws_access_key_id"):
        check_config({"extra": [{"aws_access_key_id": SECRET}]})


def test_bad_config_stops_snakemake_before_any_job(tmp_path):
    bad = _write(tmp_path / "bad.yaml", {"train": {"learning_rate": "fast"}})
    result = _snakemake_dry_run(tmp_path, bad)
    assert result.returncode != 0
    lines = [line for line in result.stdout.splitlines() if "train.learning_rate" in line]
    assert lines == [
        "config key train.learning_rate: expected type number, found 'fast' (str); see schema.yaml"
    ]
    assert "Building DAG" not in result.stdout
    assert not (tmp_path / "results").exists()


def test_snakemake_refuses_credentials_without_echo(tmp_path):
    secrets = _write(
        tmp_path / "keys.yaml", {"source": {"kind": "s3", "bucket": "b", "aws_secret_access_key": SECRET}}
    )
    result = _snakemake_dry_run(tmp_path, secrets)
    assert result.returncode != 0
    assert "source.aws_secret_access_key" in result.stdout
    assert SECRET not in result.stdout
    assert not any(SECRET in path.read_text(errors="ignore") for path in tmp_path.rglob("*.log"))


def test_any_key_is_overridden_by_an_extra_configfile(tmp_path):
    override = _write(tmp_path / "override.yaml", {"probe": {"chunks": 3}})
    result = _snakemake_dry_run(tmp_path, override)
    assert result.returncode == 0, result.stdout[-2000:]
    jobs = dict(line.split() for line in result.stdout.splitlines() if line.startswith("probe_chunk "))
    assert jobs == {"probe_chunk": "3"}


def _schema_sections(schema: dict, cls, where: str = ""):
    """(where, dataclass, schema node) for every typed section, nested ones included."""
    import dataclasses
    import typing

    yield where, cls, schema
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        inner = [arg for arg in typing.get_args(hints[field.name]) or (hints[field.name],)]
        for kind in inner:
            if dataclasses.is_dataclass(kind):
                yield from _schema_sections(schema["properties"][field.name], kind, f"{where}{field.name}.")


def test_typed_settings_have_exactly_the_schema_keys():
    import dataclasses

    from longcat.settings import Settings

    schema = load_yaml(REPO / "config" / "schema.yaml")
    for where, cls, node in _schema_sections(schema, Settings):
        fields = {field.name for field in dataclasses.fields(cls)}
        assert fields == set(node["properties"]), (
            f"{where or 'top level'}: {cls.__name__} differs from the schema"
        )


def test_typed_settings_take_every_default_from_the_schema():
    import dataclasses

    from longcat.settings import Settings, load_settings, settings_dict

    schema = load_yaml(REPO / "config" / "schema.yaml")
    minimal = {
        "source": {"kind": "s3", "bucket": "b"},
        "base_model": {"kind": "tiny"},
        "sample": {"prompts": ["p"]},
        **{key: {} for key in ("probe", "frames", "shards", "cache", "train")},
    }
    settings = load_settings(minimal)
    for where, cls, node in _schema_sections(schema, Settings):
        values, given = settings_dict(settings), minimal
        for part in where.rstrip(".").split(".") if where else []:
            values, given = values[part], given.get(part, {})
        if values is None:  # an optional section the config leaves out (base_model.hf, demo)
            continue
        for field in dataclasses.fields(cls):
            default = node["properties"][field.name].get("default", {})
            if field.name not in given and not isinstance(default, dict):
                assert values[field.name] == default, f"{where}{field.name}"
    assert settings.frames.frame_buckets == (17, 9) and isinstance(settings.frames.fps, float)
    assert settings.train.validation_prompts == () and settings.demo is None


def test_typed_settings_refuse_a_bad_value_in_one_line():
    from longcat.settings import load_settings

    config = load_config()
    config["train"]["gpus"] = 0
    config["train"]["mixed_precision"] = "bf16"
    with pytest.raises(ConfigError, match=r"^config key train\.mixed_precision: CPU training") as error:
        load_settings(config)
    assert "\n" not in str(error.value)
    config = load_config()
    config["frames"]["fps"] = "fast"
    with pytest.raises(ConfigError, match="frames.fps: expected type number, found 'fast'"):
        load_settings(config)


def test_the_demo_needs_a_local_source():
    config = load_config()
    config["source"] = {"kind": "s3", "bucket": "b"}
    with pytest.raises(ConfigError, match="source.kind"):
        check_config(config)


def test_the_demo_never_takes_over_another_folder(tmp_path):
    """With `demo` set, the demo_clips rule owns source.path (Snakemake deletes a directory output
    before remaking it): a config that points source.path at the user's clips but keeps the demo is
    refused before any job."""
    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "keep.mp4").write_bytes(b"user data")
    override = _write(tmp_path / "mine.yaml", {"source": {"kind": "local", "path": str(clips)}})
    result = _snakemake_dry_run(tmp_path, REPO / "config" / "config.yaml", override)
    assert result.returncode != 0
    assert f"would replace {clips} (source.path)" in result.stdout and "set demo: null" in result.stdout
    assert (clips / "keep.mp4").read_bytes() == b"user data"
