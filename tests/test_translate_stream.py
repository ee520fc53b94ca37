"""attn-translate as a stream: outputs opened (and wrong paths refused) before any work, input
read and translated chunk by chunk with the same results as one chunk, lines from a pipe
translated as they come, nothing left behind by a failure, and impossible option values
refused in one line."""

from __future__ import annotations

import io
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_translate_cli import run_dir, source_lines, translate_cli  # noqa: F401 (fixture)

from seq2seq_attn.cli import translate_cmd, translate_stream
from seq2seq_attn.fileio import open_atomic

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- reading in chunks ---------------------------------------------------------------------


def chunks_of(data: bytes, size: int, monkeypatch) -> list[list[str]]:
    """The chunks :func:`line_chunks` makes of ``data`` with chunks of ``size`` lines."""
    monkeypatch.setattr(translate_stream, "CHUNK_LINES", size)
    return list(translate_stream.line_chunks(io.BytesIO(data), "in.txt"))


def test_chunks_keep_the_line_rule_and_their_size(monkeypatch):
    data = b"one\r\n\ntwo\nthree\nfour\nlast without end"
    assert chunks_of(data, 2, monkeypatch) == [
        ["one", ""], ["two", "three"], ["four", "last without end"]
    ]  # fmt: skip
    assert chunks_of(data, 1000, monkeypatch) == [
        ["one", "", "two", "three", "four", "last without end"]
    ]
    assert chunks_of(b"", 2, monkeypatch) == []


def test_invalid_utf8_names_the_line_in_the_whole_input(monkeypatch, capsys):
    monkeypatch.setattr(translate_stream, "CHUNK_LINES", 2)
    chunks = translate_stream.line_chunks(io.BytesIO(b"a\nb\nc\nd\xff\n"), "in.txt")
    assert next(chunks) == ["a", "b"]
    with pytest.raises(translate_cmd.typer.Exit):
        next(chunks)
    assert "in.txt:4: not valid UTF-8" in " ".join(capsys.readouterr().err.split())


def test_a_chunk_from_a_pipe_ends_with_the_lines_that_have_arrived():
    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb") as reader, os.fdopen(write_end, "wb") as writer:
        writer.write(b"first\nsecond\n")
        writer.flush()  # the writer stays open: more input may come
        chunks = translate_stream.line_chunks(reader, "stdin")
        received: list[list[str]] = []
        thread = threading.Thread(target=lambda: received.append(next(chunks)), daemon=True)
        thread.start()
        thread.join(timeout=10)
        assert received == [["first", "second"]]
        writer.write(b"third\n")
        writer.close()
        assert list(chunks) == [["third"]]


def test_open_atomic_fails_before_the_block_and_leaves_nothing_on_an_error(tmp_path):
    with pytest.raises(FileNotFoundError), open_atomic(tmp_path / "missing" / "out.txt"):
        pytest.fail("the block must not run")
    target = tmp_path / "out.txt"
    target.write_text("kept\n")
    with pytest.raises(RuntimeError), open_atomic(target) as handle:
        handle.write(b"half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "kept\n"
    assert [path.name for path in tmp_path.iterdir()] == ["out.txt"]


# ---- outputs opened first ------------------------------------------------------------------


@pytest.fixture
def no_model(monkeypatch) -> list[Path]:
    """``translate_cmd.open_model`` replaced by a spy: the checkpoints it was asked to open."""
    opened: list[Path] = []

    def spy(checkpoint, settings, ensemble):
        opened.append(checkpoint)
        raise AssertionError("a model was opened")

    monkeypatch.setattr(translate_cmd, "open_model", spy)
    return opened


@pytest.mark.parametrize("option", ["-o", "--alignments", "--attention"])
@pytest.mark.parametrize(
    ("target", "reason"),
    [("missing/out.txt", "No such file or directory"), ("folder", "Is a directory")],
)
def test_a_wrong_output_path_fails_before_any_model_is_opened(
    run_dir,  # noqa: F811
    tmp_path,
    no_model,
    option,
    target,
    reason,
):
    (tmp_path / "folder").mkdir()
    path = tmp_path / target
    result = translate_cli(run_dir, option, path, stdin="x\ny\n")
    assert result.exit_code == 1, result.output
    assert f"{path}: cannot write ({reason})" in " ".join(result.output.split())
    assert no_model == []
    assert not (tmp_path / "missing").exists()


def test_missing_references_fail_before_any_model_is_opened(run_dir, tmp_path, no_model):  # noqa: F811
    result = translate_cli(run_dir, "--ref", tmp_path / "refs.txt", stdin="x\n")
    assert result.exit_code == 2, result.output
    assert "refs.txt: cannot read the references" in " ".join(result.output.split())
    assert no_model == []


@pytest.mark.parametrize("failure", ["utf8", "prefix"])
def test_a_failure_after_the_first_chunk_leaves_the_old_files_and_no_temporary(
    run_dir,  # noqa: F811
    corpus,
    tmp_path,
    monkeypatch,
    failure,
):
    monkeypatch.setattr(translate_stream, "CHUNK_LINES", 2)
    translated: list[int] = []
    open_model = translate_cmd.open_model

    def counting_model(*arguments):
        translator = open_model(*arguments)
        n_best = translator.n_best
        translator.n_best = lambda *a, **k: translated.append(len(a[0])) or n_best(*a, **k)
        return translator

    monkeypatch.setattr(translate_cmd, "open_model", counting_model)
    work = tmp_path / "work"
    work.mkdir()
    lines = [line.encode() for line in source_lines(corpus, 5)]
    options = []
    if failure == "utf8":
        lines[3] += b" \xff"
        message = "in.txt:4: not valid UTF-8"
    else:
        (tmp_path / "prefix.txt").write_text("a\nb\nc\n")
        options = ["--prefix", tmp_path / "prefix.txt"]
        message = "prefix.txt has 3 lines but"
    (tmp_path / "in.txt").write_bytes(b"\n".join(lines) + b"\n")
    (work / "out.txt").write_text("old output\n")
    result = translate_cli(
        run_dir, tmp_path / "in.txt", "-o", work / "out.txt", "--alignments", work / "a.txt",
        *options,
    )  # fmt: skip
    assert result.exit_code in (1, 2), result.output
    assert message in " ".join(result.output.split())
    assert translated[:1] == [2]  # the first chunk was translated before the failure
    assert sorted(path.name for path in work.iterdir()) == ["out.txt"]
    assert (work / "out.txt").read_text() == "old output\n"


# ---- chunks change nothing -----------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        [],
        ["--beam", "3", "--n-best", "2"],
        ["--prefix", "PREFIX"],
        ["--sample", "--n-best", "2", "--seed", "3"],
        ["--alignments", "ALIGNMENTS", "--attention", "ATTENTION"],
    ],
    ids=["plain", "n-best", "prefix", "sample", "alignments+attention"],
)
def test_several_chunks_give_what_one_chunk_gives(
    run_dir,  # noqa: F811
    corpus,
    tmp_path,
    monkeypatch,
    options,
):
    lines = source_lines(corpus, 7)
    lines.insert(2, "")  # a blank line stays a blank output line
    (tmp_path / "prefix.txt").write_text("\n".join((["wowo", "", "ja"] * 3)[:8]) + "\n")
    runs = []
    for chunk_lines in (1000, 3):
        monkeypatch.setattr(translate_stream, "CHUNK_LINES", chunk_lines)
        names = {
            "PREFIX": tmp_path / "prefix.txt",
            "ALIGNMENTS": tmp_path / f"a-{chunk_lines}.txt",
            "ATTENTION": tmp_path / f"att-{chunk_lines}.json",
        }
        result = translate_cli(
            run_dir, *[names.get(o, o) for o in options], stdin="\n".join(lines[:8]) + "\n"
        )
        assert result.exit_code == 0, result.output
        written = [path.read_text() for key, path in names.items() if key in options]
        runs.append((result.stdout, written))
    assert runs[0] == runs[1]
    stdout, written = runs[0]
    if "--n-best" in options:
        indices = [int(line.split(" ||| ")[0]) for line in stdout.splitlines()]
        assert indices == [index for index in range(8) for _ in range(1 if index == 2 else 2)]
    else:
        assert len(stdout.splitlines()) == 8 and stdout.splitlines()[2] == ""
    if "ATTENTION" in options:
        records = json.loads(written[1])
        assert [record["index"] for record in records] == [0, 1, 3, 4, 5, 6, 7]


def test_unmet_constraint_warnings_name_the_line_in_the_whole_input(
    run_dir,  # noqa: F811
    corpus,
    monkeypatch,
):
    monkeypatch.setattr(translate_stream, "CHUNK_LINES", 1)
    lines = source_lines(corpus, 3)
    too_long = " ".join(["wowo"] * 60)  # more pieces than the model's 48 positions
    stdin = f"{lines[0]}\n{lines[1]}\n{lines[2]}\t{too_long}\n"
    result = translate_cli(run_dir, "--tab-constraints", stdin=stdin)
    assert result.exit_code == 0, result.output
    flat = " ".join(result.stderr.split())
    assert "line 3: 1 of 1 constraint(s) could not be placed" in flat, flat
    assert "line 1:" not in flat


# ---- a pipe ----------------------------------------------------------------------------------


def read_line_within(stream, seconds: float) -> str:
    """The next line of a subprocess's ``stream``, or a failure after ``seconds``."""
    ready, _, _ = select.select([stream], [], [], seconds)
    assert ready, f"no output line within {seconds} s"
    return stream.readline()


def test_lines_from_a_pipe_are_translated_before_the_input_ends(run_dir, corpus):  # noqa: F811
    first, second = source_lines(corpus, 2)
    expected = translate_cli(run_dir, "--beam", "1", stdin=f"{first}\n{second}\n").stdout
    command = [Path(sys.executable).parent / "attn-translate", run_dir, "--beam", "1"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True, env=environment,
    )  # fmt: skip
    try:
        process.stdin.write(first + "\n")
        process.stdin.flush()
        received = read_line_within(process.stdout, 60)  # stdin still open
        process.stdin.write(second + "\n")
        process.stdin.flush()
        received += read_line_within(process.stdout, 60)
        process.stdin.close()
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
    assert received == expected


def test_a_reader_that_leaves_early_ends_translation_quietly(run_dir, corpus):  # noqa: F811
    lines = source_lines(corpus, 2)
    command = [Path(sys.executable).parent / "attn-translate", run_dir, "--beam", "1"]
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    try:
        process.stdin.write(lines[0] + "\n")
        process.stdin.flush()
        read_line_within(process.stdout, 60)
        process.stdout.close()  # what `| head -1` does after its line
        process.stdin.write(lines[1] + "\n")
        process.stdin.close()
        assert process.wait(timeout=60) == 141
        said = process.stderr.read()
        assert "Broken pipe" not in said and "Traceback" not in said
    finally:
        process.kill()


def test_a_killed_translation_leaves_the_old_output_and_no_temporary(run_dir, corpus, tmp_path):  # noqa: F811
    output = tmp_path / "out.txt"
    output.write_text("an earlier translation\n", encoding="utf-8")
    command = [Path(sys.executable).parent / "attn-translate", run_dir, "--beam", "1", "-o", output]
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL),
    )  # fmt: skip
    try:
        process.stdin.write(source_lines(corpus, 1)[0] + "\n")
        process.stdin.flush()
        deadline = time.monotonic() + 60
        while not any(tmp_path.glob(".out.txt.*.tmp")):  # the first chunk is being written
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.1)
        time.sleep(1.0)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 143
        assert "Traceback" not in process.stderr.read()
    finally:
        process.kill()
    assert output.read_text(encoding="utf-8") == "an earlier translation\n"
    assert [path.name for path in tmp_path.iterdir()] == ["out.txt"]


# ---- impossible option values --------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--precision", "banana"], "invalid value 'banana'; use auto, fp32, bf16, fp16 or int8"),
        (["--max-length-ratio", "inf"], "--max-length-ratio: invalid value inf; use a finite"),
        (["--max-length-ratio", "nan"], "--max-length-ratio: invalid value nan"),
        (["--max-length-ratio", "0"], "--max-length-ratio: invalid value 0.0"),
        (["--length-penalty", "nan"], "--length-penalty: invalid value nan"),
        (["--batch-tokens", "0"], "--batch-tokens: invalid value 0"),
        (["--top-p", "5"], "--top-p 5.0: must be in (0, 1]"),
    ],
)  # fmt: skip
def test_impossible_values_exit_2_naming_the_option(run_dir, no_model, arguments, message):  # noqa: F811
    result = translate_cli(run_dir, *arguments, stdin="x\n")
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert no_model == []


@pytest.mark.parametrize("option", ["--attention-layer", "--attention-head"])
def test_an_attention_layer_or_head_out_of_range_exits_2(run_dir, corpus, option):  # noqa: F811
    result = translate_cli(run_dir, "--show-attention", option, "9", stdin=source_lines(corpus)[0])
    assert result.exit_code == 2, result.output
    assert "out of range for this model" in " ".join(result.output.split())


def test_attn_score_refuses_an_unknown_precision_too(run_dir, tmp_path):  # noqa: F811
    from typer.testing import CliRunner

    from seq2seq_attn.cli.score_cmd import score_app

    (tmp_path / "src.txt").write_text("a\n")
    (tmp_path / "tgt.txt").write_text("b\n")
    arguments = [run_dir, tmp_path / "src.txt", tmp_path / "tgt.txt", "--precision", "fp8"]
    result = CliRunner().invoke(score_app, [str(a) for a in arguments])
    assert result.exit_code == 2, result.output
    assert "--precision: invalid value 'fp8'" in " ".join(result.output.split())
