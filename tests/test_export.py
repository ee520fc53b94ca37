"""What attn-export does to the folder it writes: --force replaces only the exported files, a
symbolic link as -o is followed, a killed export's staging folders are cleared (or its old
files put back), and a write error says what went wrong."""

from __future__ import annotations

import os

import pytest
from test_ct2 import CPU, cli, write_checkpoint

from seq2seq_attn import fileio
from seq2seq_attn.config import TokenizerConfig
from seq2seq_attn.export import EXPORT_FILES, ExportError, export_checkpoint
from seq2seq_attn.fileio import replace_files_atomic, sweep_staging
from seq2seq_attn.tokenizer import train_tokenizer
from seq2seq_attn.translation import open_translator

pytest.importorskip("ctranslate2")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoints(corpus, tmp_path_factory):
    """Two different checkpoints: ``joint`` (one SentencePiece model, a shared vocabulary)
    and ``separate`` (two models, source and target vocabularies)."""
    sources = (corpus / "train.src").read_text(encoding="utf-8").splitlines()
    targets = (corpus / "train.tgt").read_text(encoding="utf-8").splitlines()
    directory = tmp_path_factory.mktemp("checkpoints")
    found = {}
    for seed, name in enumerate(("joint", "separate")):
        config = TokenizerConfig(vocab_size=60, joint=name == "joint")
        tokenizer = train_tokenizer(sources, targets, config)
        found[name] = write_checkpoint(directory / f"{name}.pt", tokenizer, {}, seed=seed)
    return found


def names(folder) -> set[str]:
    """The names of what ``folder`` holds."""
    return {path.name for path in folder.iterdir()}


def test_force_replaces_only_the_exported_files(checkpoints, tmp_path):
    folder = export_checkpoint(checkpoints["separate"], tmp_path / "ct2")
    separate = names(folder)
    assert {"tgt.model", "source_vocabulary.json"} <= separate <= EXPORT_FILES
    (folder / "notes.txt").write_text("kept")
    (folder / "test-set").mkdir()
    (folder / "test-set" / "dev.src").write_text("kept too")
    weights = (folder / "model.bin").read_bytes()

    export_checkpoint(checkpoints["joint"], folder, force=True)
    joint = names(folder) - {"notes.txt", "test-set"}
    assert "shared_vocabulary.json" in joint and joint <= EXPORT_FILES
    assert not joint & {"tgt.model", "source_vocabulary.json", "target_vocabulary.json"}
    assert (folder / "model.bin").read_bytes() != weights
    assert (folder / "notes.txt").read_text() == "kept"
    assert (folder / "test-set" / "dev.src").read_text() == "kept too"
    assert open_translator(folder, CPU).tokenizer.joint  # no stale tgt.model left to load
    assert names(tmp_path) == {"ct2"}  # no staging folder left


def test_a_symbolic_link_as_output_is_followed(checkpoints, tmp_path):
    release = export_checkpoint(checkpoints["joint"], tmp_path / "exports" / "v3")
    weights = (release / "model.bin").read_bytes()
    current = tmp_path / "current"
    current.symlink_to(release, target_is_directory=True)
    result = cli("export_app", checkpoints["separate"], "-o", current, "--force")
    assert result.exit_code == 0, result.output
    assert current.is_symlink() and current.resolve() == release.resolve()
    assert (release / "model.bin").read_bytes() != weights
    assert (release / "tgt.model").is_file()
    assert names(tmp_path) == {"exports", "current"}

    dangling = tmp_path / "next"
    dangling.symlink_to(tmp_path / "exports" / "v4", target_is_directory=True)
    with pytest.raises(ExportError, match=r"a symbolic link to .*v4, which does not exist"):
        export_checkpoint(checkpoints["joint"], dangling)
    assert dangling.is_symlink() and not (tmp_path / "exports" / "v4").exists()


def test_a_killed_exports_staging_folders_are_swept(checkpoints, tmp_path):
    folder = export_checkpoint(checkpoints["joint"], tmp_path / "ct2")
    stale = [tmp_path / ".ct2.new-abc12345", tmp_path / ".ct2.old-zz_99xyz"]
    for leftover in stale:
        leftover.mkdir()
        (leftover / "model.bin").write_bytes(b"half written")
    others = [tmp_path / ".other", tmp_path / ".ct2.new-abc123456", tmp_path / ".ct3.new-abc12345"]
    for other in others:
        other.write_text("not ours")
    export_checkpoint(checkpoints["separate"], folder, force=True)
    assert not any(leftover.exists() for leftover in stale)
    assert all(other.read_text() == "not ours" for other in others)
    assert (folder / "tgt.model").is_file()


def test_a_folder_set_aside_by_a_killed_export_comes_back(checkpoints, tmp_path):
    folder = export_checkpoint(checkpoints["joint"], tmp_path / "ct2")
    (folder / "notes.txt").write_text("kept")
    weights = (folder / "model.bin").read_bytes()
    folder.rename(tmp_path / ".ct2.old-abc12345")  # killed between the two renames
    (tmp_path / ".ct2.new-abc12345").mkdir()
    with pytest.raises(ExportError, match="pass --force to replace an earlier export"):
        export_checkpoint(checkpoints["separate"], folder)
    assert (folder / "model.bin").read_bytes() == weights
    assert (folder / "notes.txt").read_text() == "kept"
    assert names(tmp_path) == {"ct2"}


OWNED = {"a", "b", "c"}


def replace_in_place(folder) -> None:
    """Replace ``a`` and drop ``b`` in ``folder`` by new ``a`` and ``c`` (all three owned)."""
    with replace_files_atomic(folder, OWNED) as staging:
        (staging / "a").write_text("new a")
        (staging / "c").write_text("new c")


def disk_full() -> None:
    """Fail as a full disk does."""
    raise OSError(28, "No space left on device")


def stop_after_two_moves(monkeypatch, stop) -> None:
    """Make ``os.replace`` call ``stop()`` once it has moved two files: in
    :func:`replace_in_place`, both new files are in and ``b`` is not yet removed."""
    real_replace, calls = os.replace, []

    def replace_then_stop(*arguments):
        real_replace(*arguments)
        calls.append(arguments)
        if len(calls) == 2:
            stop()

    monkeypatch.setattr(fileio.os, "replace", replace_then_stop)


@pytest.mark.parametrize("interruption", ["error", "kill"])
def test_interrupted_replacement_leaves_the_old_files(interruption, tmp_path, monkeypatch):
    folder = tmp_path / "ct2"
    folder.mkdir()
    for name in ("a", "b", "notes.txt"):
        (folder / name).write_text(f"old {name}")
    if interruption == "error":
        stop_after_two_moves(monkeypatch, disk_full)
        with pytest.raises(OSError, match="No space left"):
            replace_in_place(folder)
        monkeypatch.undo()
    else:
        child = os.fork()
        if child == 0:  # pragma: no cover - the child dies mid-replacement, as by SIGKILL
            try:
                stop_after_two_moves(monkeypatch, lambda: os._exit(0))
                replace_in_place(folder)
            finally:
                os._exit(1)
        assert os.waitpid(child, 0)[1] == 0
        assert (folder / "a").read_text() == "new a" and (folder / "c").exists()  # half done
        sweep_staging(folder, OWNED)
    assert {path.name: path.read_text() for path in folder.iterdir()} == {
        "a": "old a",
        "b": "old b",
        "notes.txt": "old notes.txt",
    }
    assert names(tmp_path) == {"ct2"}

    replace_in_place(folder)  # and then it completes
    assert {path.name: path.read_text() for path in folder.iterdir()} == {
        "a": "new a",
        "c": "new c",
        "notes.txt": "old notes.txt",
    }
    assert names(tmp_path) == {"ct2"}


def test_a_write_error_says_what_went_wrong(checkpoints, tmp_path, monkeypatch):
    import seq2seq_attn.cli.export_cmd as export_cmd

    def unwritable(*arguments):
        raise OSError("Cannot call rmtree on a symbolic link")  # no errno, no strerror

    monkeypatch.setattr(export_cmd, "export_checkpoint", unwritable)
    result = cli("export_app", checkpoints["joint"], "-o", tmp_path / "ct2")
    assert result.exit_code == 1
    assert "cannot write (Cannot call rmtree on a symbolic link)" in " ".join(result.output.split())
