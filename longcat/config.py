"""Load and check the workflow config outside Snakemake (scripts, tests, benchmarks) and inside it.

The Snakefile and the library read the same plain dict. Checks happen in this order:
credentials are refused first (so no later message can echo them), then the JSON Schema in
`config/schema.yaml` is applied and the first violation is reported as one line naming the key.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "config" / "config.yaml"
SCHEMA = REPO_ROOT / "config" / "schema.yaml"

CREDENTIAL_KEYS = frozenset({"aws_access_key_id", "aws_secret_access_key", "aws_session_token"})


class ConfigError(ValueError):
    """A config that must not be used; the message names the key and never echoes a secret."""


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, found {type(data).__name__}")
    return data


def merge(base: Mapping, override: Mapping) -> dict:
    """Deep-merge like Snakemake's `--configfile a b`: mappings merge key by key, anything else replaces."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _walk(node: Any, path: str) -> Iterator[tuple[str, str, Any]]:
    """(dotted path, key, value) of every entry in a nested config, depth first."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            yield where, str(key), value
            yield from _walk(value, where)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            where = f"{path}[{index}]"
            yield where, "", value
            yield from _walk(value, where)


_CREDENTIAL_CHAIN = (
    "boto3's standard chain: the environment (AWS_ACCESS_KEY_ID, "
    "AWS_SECRET_ACCESS_KEY, AWS_PROFILE), ~/.aws/credentials, or an instance/pod role."
)


# A URL with userinfo: `scheme://user@host` or `scheme://KEY:SECRET@host` (a secret may hold a "/").
_URL_WITH_USERINFO = re.compile(r"^[a-z][a-z0-9+.-]*://(?:[^/?#@\s]*@|[^@\s]*:[^@\s]*@)", re.IGNORECASE)


def refuse_credentials(config: Mapping, origin: str = "config") -> None:
    """Refuse AWS keys anywhere in the config, and URLs that carry a user or password (as
    `source.endpoint_url: http://KEY:SECRET@host` would), naming where they were found but never
    their value."""
    entries = list(_walk(config, ""))
    found = [where for where, key, _ in entries if key.lower() in CREDENTIAL_KEYS]
    if found:
        raise ConfigError(
            f"{origin}: AWS credentials found at {', '.join(found)}; credentials never go in the config. "
            f"Remove them and use {_CREDENTIAL_CHAIN}"
        )
    in_urls = [
        where for where, _, value in entries if isinstance(value, str) and _URL_WITH_USERINFO.match(value)
    ]
    if in_urls:
        raise ConfigError(
            f"{origin}: credentials found in the URL at {', '.join(in_urls)} (a user or password before "
            f"'@'); credentials never go in the config. Give the URL without them and use {_CREDENTIAL_CHAIN}"
        )


def _key_path(error, *extra: str) -> str:
    parts = []
    for part in [*error.absolute_path, *extra]:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        else:
            parts.append(f".{part}" if parts else str(part))
    return "".join(parts) or "(top level)"


def _shown(value) -> str:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return f"{shown} ({type(value).__name__})"


def _describe(error) -> str:
    validator, value = error.validator, error.validator_value
    if validator == "required":
        missing = [key for key in value if key not in error.instance]
        return f"{_key_path(error, missing[0])}: required key missing"
    if validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        return f"{_key_path(error, extra[0])}: unknown key (expected one of {allowed})"
    if validator == "type":
        expected = f"type {' or '.join(value) if isinstance(value, list) else value}"
    elif validator == "enum":
        expected = f"one of {', '.join(map(repr, value))}"
    else:
        expected = f"{validator} {value!r}"
    return f"{_key_path(error)}: expected {expected}, found {_shown(error.instance)}"


def _schema(schema: str | Path | Mapping) -> Mapping:
    return schema if isinstance(schema, Mapping) else load_yaml(schema)


def schema_errors(config: Mapping, schema_path: str | Path | Mapping = SCHEMA) -> list[str]:
    """One line per schema violation, ordered by key: `train.learning_rate: expected type number, ...`."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(_schema(schema_path))
    # By key; at one key, a plain violation before one of a conditional rule (`if ... then`).
    errors = sorted(
        validator.iter_errors(config),
        key=lambda e: ([str(p) for p in e.absolute_path], "then" in e.schema_path),
    )
    return [_describe(error) for error in errors]


def check_config(config: Mapping, schema_path: str | Path | Mapping = SCHEMA, origin: str = "config") -> None:
    """Raise ConfigError naming the first bad key (credentials first, then the schema)."""
    refuse_credentials(config, origin)
    errors = schema_errors(config, schema_path)
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(f"{origin} key {errors[0]}{more}; see {SCHEMA.name}")


def fill_defaults(config: dict, schema_path: str | Path | Mapping = SCHEMA) -> dict:
    """Fill in the schema's default for each key the config leaves out (in place, as Snakemake does)."""
    schema = _schema(schema_path)

    def fill(node: dict, subschema: Mapping) -> None:
        for key, prop in subschema.get("properties", {}).items():
            if key not in node and "default" in prop:
                node[key] = copy.deepcopy(prop["default"])
            if isinstance(node.get(key), dict):
                fill(node[key], prop)

    fill(config, schema)
    return config


def load_config(*overrides: str | Path, base: str | Path = DEFAULT_CONFIG) -> dict:
    """The checked config Snakemake sees for `--configfile OVERRIDE...` on top of the embedded default."""
    config = load_yaml(base)
    refuse_credentials(config, str(base))
    for path in overrides:
        layer = load_yaml(path)
        refuse_credentials(layer, str(path))
        config = merge(config, layer)
    check_config(config)
    return fill_defaults(config)
