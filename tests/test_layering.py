"""The package's imports follow the one-way arrows of ARCHITECTURE.md.

Each module may import only the project modules and third-party packages listed for it below
(the standard library is always allowed). A new module must be added here, in its place in the
flow, before it can land.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import seq2seq_attn

PACKAGE_DIR = Path(seq2seq_attn.__file__).parent
PACKAGE = "seq2seq_attn"

UPSTREAM_OF_TRAIN = {
    "config", "tokenizer", "data", "attention", "models", "models.common", "models.rnn",
    "models.transformer", "decoding", "metrics", "checkpoint", "evaluate", "optim",
}  # fmt: skip

CLI_MODULES = {"cli", "cli.console", "cli.train_cmd", "cli.translate_cmd"}
CLI_PACKAGES = {"torch", "typer", "rich", "matplotlib"}

# module -> (project modules it may import, third-party packages it may import)
ALLOWED: dict[str, tuple[set[str], set[str]]] = {
    "": (set(), set()),  # the package's __init__
    "config": (set(), {"yaml"}),
    "tokenizer": ({"config"}, {"sentencepiece"}),
    "batching": ({"tokenizer"}, {"torch"}),
    "data": ({"config", "tokenizer", "batching"}, {"datasets", "torch"}),
    "attention": (set(), {"torch"}),
    "models.common": ({"attention"}, {"torch"}),
    "models.rnn": ({"attention", "models.common"}, {"torch"}),
    "models.transformer": ({"attention", "models.common"}, {"torch"}),
    "models": ({"config", "models.common", "models.rnn", "models.transformer"}, {"torch"}),
    "decoding": ({"models.common"}, {"torch"}),
    "metrics": (set(), {"sacrebleu"}),
    "checkpoint": (
        {"config", "tokenizer", "models", "models.common", "models.rnn", "models.transformer"},
        {"torch"},
    ),
    "evaluate": ({"config", "data", "tokenizer", "decoding", "metrics"}, {"torch"}),
    "optim": ({"config", "tokenizer", "data", "models"}, {"torch"}),
    "train": (UPSTREAM_OF_TRAIN, {"torch"}),
    **{
        module: (
            UPSTREAM_OF_TRAIN | {"train", *CLI_MODULES},
            {"torch", "typer", "rich", "matplotlib"},
        )
        for module in CLI_MODULES
    },
}


def module_name(path: Path) -> str:
    """'models/rnn.py' -> 'models.rnn'; 'models/__init__.py' -> 'models'; '__init__.py' -> ''."""
    parts = list(path.relative_to(PACKAGE_DIR).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(source: str, module: str, is_package: bool) -> set[str]:
    """Absolute dotted names imported by a module's source (relative imports resolved)."""
    package_parts = [PACKAGE, *module.split(".")] if module else [PACKAGE]
    if not is_package:
        package_parts = package_parts[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                anchor = package_parts[: len(package_parts) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def project_module(name: str) -> str | None:
    """'seq2seq_attn.models.rnn.X' -> 'models.rnn' (the longest known module), else None."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    parts = name.split(".")[1:]
    while parts:
        candidate = PACKAGE_DIR.joinpath(*parts)
        if ".".join(parts) in ALLOWED or candidate.with_suffix(".py").exists():
            return ".".join(parts)
        parts.pop()
    return ""


def violations(module: str, source: str, is_package: bool = False) -> list[str]:
    """Imports of ``module`` that the table does not allow, as readable messages."""
    if module not in ALLOWED:
        name = module or "__init__"
        return [f"{name}: not in the layering table; add it to ALLOWED and ARCHITECTURE.md"]
    allowed_modules, allowed_packages = ALLOWED[module]
    internal, external = set(), set()
    for name in imported_names(source, module, is_package):
        resolved = project_module(name)
        if resolved is not None:
            internal.add(resolved)
        else:
            external.add(name.split(".")[0])
    wrong_modules = sorted(internal - allowed_modules - {module, ""})
    wrong_packages = sorted(external - allowed_packages - set(sys.stdlib_module_names) - {""})
    return [f"{module}: imports project module {name!r}" for name in wrong_modules] + [
        f"{module}: imports third-party package {name!r}" for name in wrong_packages
    ]


def package_files() -> list[Path]:
    """Every Python file of the package."""
    return sorted(PACKAGE_DIR.rglob("*.py"))


@pytest.mark.parametrize("path", package_files(), ids=lambda p: str(p.relative_to(PACKAGE_DIR)))
def test_imports_follow_the_architecture(path: Path):
    source = path.read_text(encoding="utf-8")
    assert violations(module_name(path), source, path.name == "__init__.py") == []


def test_checker_catches_wrong_arrows():
    assert violations("attention", "from seq2seq_attn.config import Config\n") == [
        "attention: imports project module 'config'"
    ]
    assert violations("models.rnn", "from ..decoding import beam_search\n") == [
        "models.rnn: imports project module 'decoding'"
    ]
    assert violations("train", "import rich.progress\n") == [
        "train: imports third-party package 'rich'"
    ]
    assert violations("decoding", "import scripts.bench_attention\n") == [
        "decoding: imports third-party package 'scripts'"
    ]
    assert violations("attention", "import math\nimport torch.nn.functional as F\n") == []
    assert violations("mystery", "") != []
