"""Every module and function stays small enough to read in one sitting (STYLE.md): modules
under 500 lines, functions under 60. A typer command's signature (its ``Annotated`` options)
does not count: only its body does."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import seq2seq_attn

ROOT = Path(seq2seq_attn.__file__).parent.parent
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60


def source_files() -> list[Path]:
    """The package's and the scripts' Python files."""
    return sorted([*(ROOT / "seq2seq_attn").rglob("*.py"), *(ROOT / "scripts").glob("*.py")])


def long_functions(source: str) -> list[tuple[str, int]]:
    """``(name, lines)`` of each function over the limit; a decorated function (a CLI command)
    is counted from its first body statement, so its signature is left out."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            start = node.body[0].lineno if node.decorator_list else node.lineno
            length = node.end_lineno - start + 1
            if length > MAX_FUNCTION_LINES:
                found.append((node.name, length))
    return found


@pytest.mark.parametrize("path", source_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_and_functions_stay_small(path: Path):
    source = path.read_text(encoding="utf-8")
    assert len(source.splitlines()) <= MAX_MODULE_LINES
    assert long_functions(source) == []


def test_the_size_check_measures_bodies_of_commands_only():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    plain = f"def f(\n    a,\n):\n{body}\n"
    command = f"@app.command()\ndef f(\n    a,\n):\n{body}\n"
    assert long_functions(plain) == [("f", MAX_FUNCTION_LINES + 3)]
    assert long_functions(command) == []
