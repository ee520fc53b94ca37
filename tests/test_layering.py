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

MODELS = {
    "models", "models.common", "models.rnn", "models.rnn_loop", "models.transformer",
    "models.ensemble",
}  # fmt: skip
CONFIG = {"config", "config.loader", "config.model", "config.sections"}
TRANSLATION = {
    "translation", "translation.common", "translation.torch_backend", "translation.ct2_backend",
    "translation.opener", "translation.attention_views",
}  # fmt: skip

UPSTREAM_OF_TRAIN = {
    *CONFIG, *MODELS, "corpus", "fileio", "tokenizer", "batching", "data", "data_cache", "loaders",
    "attention", "decoding", "metrics", "device", "checkpoint", "rundir", "evaluate", "optim",
    "distributed", "events", "session", *TRANSLATION, "export", "scoring", "sampling", "alignment",
    "constrained", "constrained_phrases", "terminology", "tensorboard_log", "initial",
    "subword_sampling", "stop_signals", "streaming",
}  # fmt: skip

CLI_MODULES = {
    "cli",
    "cli.console",
    "cli.train_cmd",
    "cli.translate_cmd",
    "cli.export_cmd",
    "cli.score_cmd",
    "cli.translate_guides",
    "cli.translate_run",
    "cli.translate_stream",
    "cli.progress",
    "cli.serve_cmd",
}
CLI_PACKAGES = {"torch", "typer", "rich"}
SERVE_MODULES = {"serve.schema", "serve.batcher", "serve.model_info", "serve.app", "serve.server"}

# module -> (project modules it may import, third-party packages it may import)
ALLOWED: dict[str, tuple[set[str], set[str]]] = {
    "": (set(), set()),  # the package's __init__
    "config": ({"config.loader", "config.model", "config.sections"}, set()),
    "config.loader": (set(), {"yaml"}),
    "config.model": ({"config.loader"}, set()),
    "config.sections": ({"config.loader", "config.model"}, set()),
    "corpus": (set(), set()),
    "fileio": (set(), set()),
    "events": (set(), set()),
    "stop_signals": (set(), set()),
    "multi30k": ({"corpus", "fileio"}, set()),
    "plotting": ({"fileio"}, {"matplotlib"}),
    "subword_sampling": (set(), {"sentencepiece"}),
    "tokenizer": ({"config", "fileio", "subword_sampling"}, {"sentencepiece"}),
    "batching": ({"tokenizer"}, {"torch"}),
    "data_cache": (set(), {"datasets"}),
    "data": ({"config", "corpus", "data_cache", "tokenizer"}, {"datasets", "numpy"}),
    "loaders": ({"batching", "stop_signals", "tokenizer"}, {"datasets", "torch"}),
    "attention": (set(), {"torch"}),
    "models.common": ({"attention"}, {"torch"}),
    "models.rnn": ({"config", "attention", "models.common", "models.rnn_loop"}, {"torch"}),
    "models.rnn_loop": ({"attention"}, {"torch"}),
    "models.transformer": ({"config", "attention", "models.common"}, {"torch"}),
    "models.ensemble": ({"models.common"}, {"torch"}),
    "models.int8": ({"attention", "models.transformer"}, {"torch"}),
    "models": ({"config", *MODELS}, {"torch"}),
    "decoding": ({"config", "models.common"}, {"torch"}),
    "sampling": ({"config", "decoding", "models.common"}, {"torch"}),
    "streaming": ({"config", "decoding", "models.common"}, {"torch"}),
    "constrained_phrases": (set(), {"torch"}),
    "constrained": ({"config", "constrained_phrases", "decoding", "models.common"}, {"torch"}),
    "terminology": ({"corpus"}, set()),
    "metrics": (set(), {"sacrebleu", "sacremoses"}),
    "alignment": ({"batching", "corpus", "models.common", "tokenizer"}, {"torch"}),
    "device": ({"config"}, {"torch"}),
    "rundir": ({"events", "fileio"}, set()),
    "checkpoint": ({"config", "events", "fileio", "tokenizer", "rundir", *MODELS}, {"torch"}),
    "export": (
        {"config", "fileio", "tokenizer", "checkpoint", "models.transformer"},
        {"torch", "ctranslate2"},
    ),
    "translation.common": ({"config", "decoding", "sampling", "tokenizer"}, set()),
    "scoring": ({"batching", "models.common", "tokenizer"}, {"torch"}),
    "translation.attention_views": ({"tokenizer", "decoding", "models.common"}, {"torch"}),
    "translation.torch_backend": (
        {
            "alignment",
            "constrained",
            "config",
            "batching",
            "tokenizer",
            "decoding",
            "device",
            "checkpoint",
            "models.ensemble",
            "models.int8",
            "sampling",
            "scoring",
            "streaming",
            "translation.attention_views",
            "translation.common",
        },
        {"torch"},
    ),
    "translation.ct2_backend": (
        {
            "config",
            "batching",
            "tokenizer",
            "decoding",
            "device",
            "export",
            "sampling",
            "scoring",
            "translation.common",
        },
        {"torch", "ctranslate2"},
    ),
    "translation.opener": (
        {
            "config",
            "checkpoint",
            "export",
            "translation.common",
            "translation.torch_backend",
            "translation.ct2_backend",
        },
        set(),
    ),
    "translation": ({"translation.common", "translation.opener"}, set()),
    "evaluate": (
        {"config", "data", "tokenizer", "decoding", "metrics", "translation.torch_backend"},
        {"torch"},
    ),
    "benchmark": ({"metrics"}, set()),
    "benchmark_run": (
        {
            "benchmark",
            "checkpoint",
            "config",
            "fileio",
            "multi30k",
            "plotting",
            "rundir",
            "translation",
        },
        set(),
    ),
    "optim": ({"config", "tokenizer", "batching", "device", "models"}, {"torch"}),
    "distributed": ({"config"}, {"torch"}),
    "initial": ({"config", "checkpoint", "rundir"}, set()),
    "session": (
        {
            "config",
            "data",
            "data_cache",
            "tokenizer",
            "device",
            "distributed",
            "checkpoint",
            "rundir",
            "models",
            "initial",
        },
        {"torch", "datasets"},
    ),
    "tensorboard_log": ({"config", "events", "plotting", "rundir"}, {"torch"}),
    "train": (UPSTREAM_OF_TRAIN, {"torch"}),
    "serve.schema": ({"config", "constrained_phrases", "sampling", "translation"}, {"pydantic"}),
    "serve.batcher": ({"decoding", "translation", "serve.schema"}, set()),
    "serve.model_info": ({"translation", "translation.torch_backend", "serve.schema"}, set()),
    "serve.app": (
        {"serve.batcher", "serve.schema"},
        {"fastapi", "starlette", "swagger_ui_bundle"},
    ),
    "serve.server": (set(), {"fastapi", "uvicorn"}),
    "serve": (SERVE_MODULES, set()),
    **{
        module: (
            UPSTREAM_OF_TRAIN | SERVE_MODULES | {"serve", "train", "plotting", *CLI_MODULES},
            CLI_PACKAGES,
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


SCRIPTS_DIR = PACKAGE_DIR.parent / "scripts"


def script_violations(name: str, source: str) -> list[str]:
    """What a script under ``scripts/`` must not do: import the CLI (``seq2seq_attn.cli``),
    private names (``_x``), another script, or edit ``sys.path`` to reach one; scripts are thin
    drivers over the package's public API."""
    siblings = {path.stem for path in SCRIPTS_DIR.glob("*.py")}
    found = []
    for imported in sorted(imported_names(source, "", True)):
        parts = imported.split(".")
        if parts[0] == PACKAGE and parts[1:2] == ["cli"]:
            found.append(f"{name}: imports the CLI ({imported}); use the package's API")
        elif parts[0] == PACKAGE and any(part.startswith("_") for part in parts[1:]):
            found.append(f"{name}: imports a private name ({imported})")
        elif parts[0] in siblings:
            found.append(
                f"{name}: imports the script {parts[0]!r}; move what it shares into the package"
            )
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Attribute)
            and node.attr == "path"
            and (isinstance(node.value, ast.Name) and node.value.id == "sys")
        ):
            found.append(f"{name}: touches sys.path (line {node.lineno})")
            break
    return found


@pytest.mark.parametrize("path", sorted(SCRIPTS_DIR.glob("*.py")), ids=lambda p: p.name)
def test_scripts_use_only_the_public_api(path: Path):
    assert script_violations(path.name, path.read_text(encoding="utf-8")) == []


def test_the_script_checker_catches_reaching_around_the_package():
    assert script_violations("x.py", "from seq2seq_attn.cli.translate_cmd import plot\n") == [
        "x.py: imports the CLI (seq2seq_attn.cli.translate_cmd); use the package's API",
        "x.py: imports the CLI (seq2seq_attn.cli.translate_cmd.plot); use the package's API",
    ]
    assert script_violations("x.py", "from seq2seq_attn.evaluate import _search\n") == [
        "x.py: imports a private name (seq2seq_attn.evaluate._search)"
    ]
    assert script_violations("x.py", "import sys\nsys.path.insert(0, 'scripts')\n") == [
        "x.py: touches sys.path (line 2)"
    ]
    assert script_violations("x.py", "from prepare_multi30k import prepare\n")[0].startswith(
        "x.py: imports the script 'prepare_multi30k'"
    )
    assert script_violations("x.py", "from seq2seq_attn.evaluate import translate\n") == []


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
