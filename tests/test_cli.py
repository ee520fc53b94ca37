"""The console scripts install and answer --help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from seq2seq_attn.cli import train_app, translate_app

runner = CliRunner()


@pytest.mark.parametrize(("app", "words"), [(train_app, "CONFIG"), (translate_app, "CHECKPOINT")])
def test_help_describes_the_command(app, words):
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert words in result.output


@pytest.mark.parametrize("script", ["attn-train", "attn-translate"])
def test_console_scripts_are_installed(script):
    executable = Path(sys.executable).parent / script
    result = subprocess.run([executable, "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout
