"""The console scripts: help, end-to-end training through typer's CliRunner, config and run
directory errors, and Ctrl-C / SIGTERM on a real process leaving a resumable last.pt."""

from __future__ import annotations

import inspect
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from seq2seq_attn.checkpoint import load_checkpoint
from seq2seq_attn.cli import export_app, score_app, train_app, translate_app

runner = CliRunner()
SCRIPTS = Path(sys.executable).parent


def write_config(path: Path, corpus: Path, family: str, **train) -> Path:
    """A tiny model on the toy corpus slice, written as YAML (what a user hands the CLI)."""
    model = {
        "transformer": {"transformer": {"d_model": 32, "num_heads": 4, "encoder_layers": 1,
                                        "decoder_layers": 1, "ff_size": 64}},
        "rnn": {"rnn": {"embedding_size": 16, "hidden_size": 32, "attention_size": 16}},
    }[family]  # fmt: skip
    config = {
        "data": {"src_lang": "src", "tgt_lang": "tgt", "train": str(corpus / "train"),
                 "dev": str(corpus / "dev"), "test": "", "max_tokens": 256, "max_length": 40,
                 "cache_dir": str(corpus / "cache")},
        "tokenizer": {"vocab_size": 64},
        "model": {"family": family, "max_positions": 64, **model},
        "train": {"max_steps": 12, "validate_every": 6, "save_every": 6, "log_every": 3,
                  "warmup_steps": 5, "lr": 3e-3, "precision": "fp32", **train},
        "decode": {"max_length_offset": 3},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def help_panels(output: str) -> dict[str, list[list[str]]]:
    """The rows of each panel of rich's help (``╭─ Options ─...``), each row split into words
    (a required argument's ``*`` dropped)."""
    panels: dict[str, list[list[str]]] = {}
    rows: list[list[str]] | None = None
    for line in output.splitlines():
        header = re.match(r"\s*╭─ (.+?) ─", line)
        if header:
            rows = panels.setdefault(header.group(1), [])
        elif line.lstrip().startswith("╰"):
            rows = None
        elif rows is not None and line.lstrip().startswith("│"):
            words = line.strip().strip("│").split()
            rows.append(words[1:] if words[:1] == ["*"] else words)
    return panels


@pytest.mark.parametrize(
    "app",
    [train_app, translate_app, export_app, score_app],
    ids=["attn-train", "attn-translate", "attn-export", "attn-score"],
)
def test_help_describes_the_command(app, monkeypatch):
    # the width typer gives rich, whatever earlier tests left in the process's terminal state
    monkeypatch.setattr("typer.rich_utils.MAX_WIDTH", 200)
    command = typer.main.get_command(app)
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "200"}, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert result.output.lstrip().startswith("Usage:")
    # what the command really accepts, not a hand-written list
    options = [p for p in command.params if p.param_type_name == "option"]
    arguments = [p for p in command.params if p.param_type_name == "argument"]
    assert options and arguments
    expected_names = {name for p in options for name in (*p.opts, *p.secondary_opts)}
    expected_names |= set(command.get_help_option_names(command.context_class(command)))
    panels = help_panels(result.output)
    assert {"Arguments", "Options"} <= panels.keys(), result.output
    # every option row's leading words are its names (--resume --no-resume, --output -o)
    # (options may be grouped in panels of their own: "Sampling", "Attention"...)
    option_rows = [row for panel, rows in panels.items() if panel != "Arguments" for row in rows]
    listed = [list(itertools.takewhile(lambda w: w.startswith("-"), row))
              for row in option_rows]  # fmt: skip
    listed_names = [name for names in listed for name in names]
    assert sorted(listed_names) == sorted(expected_names), result.output
    for option in options:  # each option on a row of its own, all its names together
        assert sorted((*option.opts, *option.secondary_opts)) in map(sorted, listed), option.name
    # the arguments in order, by the names the usage line shows
    expected_arguments = [p.metavar or p.name.upper() for p in arguments]
    assert [row[0] for row in panels["Arguments"] if row] == expected_arguments, result.output
    usage = result.output.lstrip().splitlines()[0]
    assert all(name in usage for name in expected_arguments), usage
    # the description: the first line of the command's docstring
    flat = " ".join(result.output.replace("│", " ").split())
    first_line = inspect.getdoc(command.callback).splitlines()[0]
    assert " ".join(first_line.split()) in flat
    for parameter in command.params:  # each help sentence whole: rich markup must not eat "[...]"
        if parameter.help:
            assert " ".join(parameter.help.replace("\\[", "[").split()) in flat, parameter.name


@pytest.mark.parametrize(
    ("script", "app"),
    [("attn-train", train_app), ("attn-translate", translate_app), ("attn-export", export_app),
     ("attn-score", score_app)],
)  # fmt: skip
def test_console_scripts_are_installed(script, app):
    result = subprocess.run(
        [SCRIPTS / script, "--help"], capture_output=True, text=True, env={**os.environ,
        "COLUMNS": "200"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    usage = result.stdout.lstrip().splitlines()[0]
    assert usage.startswith(f"Usage: {script} "), usage  # the installed script, by its name
    command = typer.main.get_command(app)  # and the command it is installed for
    first_line = inspect.getdoc(command.callback).splitlines()[0]
    assert " ".join(first_line.split()) in " ".join(result.stdout.replace("│", " ").split())


@pytest.mark.parametrize("family", ["transformer", "rnn"])
def test_trains_end_to_end(tmp_path, corpus, family):
    config = write_config(tmp_path / f"{family}.yaml", corpus, family)
    run_dir = tmp_path / "run"
    result = runner.invoke(train_app, [str(config), "--run-dir", str(run_dir), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "stopped (max_steps) at step 12" in result.output
    assert "best dev BLEU" in result.output
    for name in ("config.yaml", "metrics.jsonl", "train.log", "last.pt", "best.pt", "src.model"):
        assert (run_dir / name).is_file(), name
    assert load_checkpoint(run_dir / "last.pt")["progress"]["step"] == 12
    assert "validation at step 12" in (run_dir / "train.log").read_text(encoding="utf-8")


def test_overrides_and_resume_continue_the_run(tmp_path, corpus):
    config = write_config(tmp_path / "c.yaml", corpus, "transformer")
    run_dir = tmp_path / "run"
    first = runner.invoke(train_app, [str(config), "--run-dir", str(run_dir),
                                      "--set", "train.max_steps=6"])  # fmt: skip
    assert first.exit_code == 0, first.output
    assert load_checkpoint(run_dir / "last.pt")["progress"]["step"] == 6
    resumed = runner.invoke(train_app, [str(config), "--run-dir", str(run_dir), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert load_checkpoint(run_dir / "last.pt")["progress"]["step"] == 12


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--set", "train.lerning_rate=1"], "train.lerning_rate: unknown key"),
        (
            ["--set", "model.transformer.num_heads=5"],
            "model.transformer.num_heads: invalid value 5",
        ),
        (["--set", "train.max_steps=many"], "train.max_steps: expected a whole number"),
        (["--precision", "bf17"], "train.precision: invalid value 'bf17'"),
        (["--set", "trian.lr=1"], "unknown section 'trian'; did you mean 'train'?"),
    ],
)
def test_config_errors_name_the_key(tmp_path, corpus, arguments, message):
    config = write_config(tmp_path / "c.yaml", corpus, "rnn")
    result = runner.invoke(train_app, [str(config), "--run-dir", str(tmp_path / "run"), *arguments])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "run").exists()  # nothing is written for a bad config


def test_missing_config_file_is_named(tmp_path):
    result = runner.invoke(train_app, [str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "nope.yaml: config file not found" in " ".join(result.output.split())


def test_non_empty_run_dir_is_refused_and_left_alone(tmp_path, corpus):
    config = write_config(tmp_path / "c.yaml", corpus, "rnn")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("keep me", encoding="utf-8")
    result = runner.invoke(train_app, [str(config), "--run-dir", str(run_dir)])
    assert result.exit_code == 2
    assert "not empty (notes.txt); pass --resume" in " ".join(result.output.split())
    assert [p.name for p in run_dir.iterdir()] == ["notes.txt"]
    resume = runner.invoke(train_app, [str(config), "--run-dir", str(tmp_path / "new"), "--resume"])
    assert resume.exit_code == 2
    assert "nothing to resume" in " ".join(resume.output.split())


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_a_loadable_last_checkpoint(tmp_path, corpus, sig, code):
    config = write_config(
        tmp_path / "c.yaml", corpus, "transformer", max_steps=100_000, validate_every=0,
        save_every=0, log_every=1,
    )  # fmt: skip
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [SCRIPTS / "attn-train", str(config), "--run-dir", str(run_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=os.environ | {"HF_DATASETS_OFFLINE": "1"},
        preexec_fn=lambda: signal.signal(sig, signal.SIG_DFL),  # as in a terminal
    )  # fmt: skip
    output = []
    deadline = time.monotonic() + 120
    for line in process.stdout:  # wait until training is really under way
        output.append(line)
        if "step 3:" in line or time.monotonic() > deadline:
            break
    process.send_signal(sig)
    rest, _ = process.communicate(timeout=120)
    text = "".join(output) + rest
    assert process.returncode == code, text
    assert "--resume" in text
    state = load_checkpoint(run_dir / "last.pt")
    assert state["progress"]["step"] >= 3
    assert not list(run_dir.glob(".*.tmp"))  # no half-written checkpoint left behind


def test_a_run_ended_by_the_time_guard_says_so(tmp_path, corpus):
    config = write_config(tmp_path / "guarded.yaml", corpus, "transformer", max_steps=100_000)
    run_dir = tmp_path / "run"
    arguments = [str(config), "--run-dir", str(run_dir), "--set", "train.max_minutes=0.003"]
    result = runner.invoke(train_app, arguments)
    assert result.exit_code == 0, result.output
    assert "stopped (max_minutes)" in result.output
    assert "train.max_minutes ended this run" in " ".join(result.output.split())
