"""Settings as Snakemake params, one param per leaf setting, and back.

Snakemake reruns a job whose params changed and prints the params that differ, before and now. With one
param per leaf that is the changed settings alone (`{'train.learning_rate': 0.003}` before, `1e-06` now),
where a whole section as one param would be printed whole, twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from longcat.settings import settings_dict


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as {"a.b.c": leaf}; lists and other values are leaves."""
    if not isinstance(value, Mapping):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def leaf_params(**sections: Any) -> dict[str, dict[str, Any]]:
    """Settings as Snakemake params, one per leaf setting: `{"train__seed": {"train.seed": 42}}`;
    `from_leaf_params` gives the sections back in the job."""
    flat = flatten({name: settings_dict(value) for name, value in sections.items()})
    return {key.replace(".", "__"): {key: value} for key, value in flat.items()}


def from_leaf_params(params: Any) -> dict[str, Any]:
    """The sections that `leaf_params` spread over a job's params (`snakemake.params`; its other params
    are left out)."""
    sections: dict[str, Any] = {}
    for name, value in params.items():
        if not (isinstance(value, dict) and list(value) == [name.replace("__", ".")]):
            continue
        ((key, leaf),) = value.items()
        *parents, last = key.split(".")
        node = sections
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = leaf
    return sections
