"""The one atomic-write helper."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from seq2seq_attn.fileio import write_atomic, write_folder_atomic, write_text_atomic


def test_a_write_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "deep" / "out.txt"
    write_text_atomic(target, "first\n")
    write_atomic(target, lambda handle: handle.write(b"second\n"))
    assert target.read_bytes() == b"second\n"
    assert [path.name for path in target.parent.iterdir()] == ["out.txt"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "out.txt"
    write_text_atomic(target, "kept\n")

    def half_then_fail(handle):
        handle.write(b"half of the new conte")
        raise KeyboardInterrupt  # a Ctrl-C in the middle of the write

    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, half_then_fail)
    assert target.read_text() == "kept\n"
    assert [path.name for path in tmp_path.iterdir()] == ["out.txt"]


def test_a_pipe_or_device_target_is_written_straight_through(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    write_text_atomic(fifo, "through the pipe\n")
    reader.join(timeout=10)
    assert received == [b"through the pipe\n"]
    assert fifo.exists() and not fifo.is_file()  # still the pipe, not a file renamed over it


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path):
    target = tmp_path / "export"
    with write_folder_atomic(target) as staging:
        (staging / "a.txt").write_text("first")
        assert not target.exists()  # nothing in place until the block ends
    assert (target / "a.txt").read_text() == "first"
    with pytest.raises(RuntimeError), write_folder_atomic(target) as staging:
        (staging / "a.txt").write_text("half")
        raise RuntimeError("interrupted")
    assert (target / "a.txt").read_text() == "first"  # the earlier folder is kept
    with write_folder_atomic(target) as staging:
        (staging / "b.txt").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no staging or old folder left
