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


LIBRARY = REPO / "longcat"
MAX_MODULE_LINES = 350


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _library_imports() -> dict[str, set[str]]:
    """Module -> the library modules it imports (at any depth in its code: lazy imports count too)."""
    import ast

    modules = {_module_name(path): path for path in LIBRARY.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module)
                imported |= {f"{node.module}.{alias.name}" for alias in node.names}
        graph[name] = {module for module in imported if module in modules and module != name}
    return graph


def test_no_library_module_is_over_the_size_limit():
    sizes = {_module_name(path): len(path.read_text().splitlines()) for path in LIBRARY.rglob("*.py")}
    too_long = {name: lines for name, lines in sizes.items() if lines > MAX_MODULE_LINES}
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines: {too_long}"


def test_library_imports_have_no_cycle():
    graph = _library_imports()
    done, path = set(), []

    def visit(module: str) -> None:
        if module in path:
            cycle = path[path.index(module) :] + [module]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        path.append(module)
        for imported in sorted(graph[module]):
            # A package's __init__ runs before its submodules; importing a submodule is not a cycle.
            if not module.startswith(imported + "."):
                visit(imported)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_library_reads_no_config_dict_with_a_default():
    """Defaults live in config/schema.yaml only: the library gets typed settings, never `cfg.get(k, d)`."""
    import re

    # `.get(key, default)` or `.get(key) or default` on anything named like a config.
    config_names = r"\b\w*(cfg|config|section|settings|source|frames|probe|cache|train)\w*"
    pattern = re.compile(config_names + r"\.get\((\"[^\"]*\"|'[^']*'|\w+)\s*(,|\)\s*or\b)")
    found = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in sorted(LIBRARY.rglob("*.py"))
        if path.name != "config.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, "\n".join(found)
