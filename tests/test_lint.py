"""The whole repository passes Snakemake's linter, snakefmt and ruff."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300
    )


def test_snakemake_lint_is_clean():
    result = _run(sys.executable, "-m", "snakemake", "--lint")
    assert result.returncode == 0 and "Lints for" not in result.stdout, result.stdout[-6000:]


@pytest.mark.parametrize(
    "command",
    [
        ("snakefmt", "--check", "."),
        ("ruff", "check", "."),
        ("ruff", "format", "--check", "."),
    ],
    ids=" ".join,
)
def test_formatters_and_linters_are_clean(command):
    result = _run(str(BIN / command[0]), *command[1:])
    assert result.returncode == 0, result.stdout[-6000:]
