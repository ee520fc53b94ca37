"""A run directory nothing can corrupt: the run lock, every stop signal (to the process or its
whole group, with DataLoader workers), --auto-resume, the sweep of temporaries, failed writes
and bad run directories as one line."""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_cli import runner, write_config

from seq2seq_attn import stop_signals
from seq2seq_attn.checkpoint import load_checkpoint
from seq2seq_attn.cli import train_app
from seq2seq_attn.fileio import write_atomic
from seq2seq_attn.rundir import (
    LAST_FILE,
    LOCK_FILE,
    locked_run_dir,
    number_last,
    numbered_checkpoints,
    read_metrics,
    sweep_temporaries,
)
from seq2seq_attn.stop_signals import StopOnSignal, uninterrupted

SCRIPTS = Path(sys.executable).parent
TIMEOUT = 120  # seconds: a hang fails the test instead of the suite


def as_in_a_terminal() -> None:
    """Stop signals at their default disposition (a suite run as a background job, or under
    nohup, would pass on ignoring some of them)."""
    for sig in stop_signals.STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)


def start_training(
    config: Path, run_dir: Path, *options: str, prefix: tuple[str, ...] = ()
) -> subprocess.Popen:
    """``attn-train`` (after ``prefix``, e.g. nohup) in a process group of its own (one
    thread), output in a pipe."""
    return subprocess.Popen(
        [*prefix, SCRIPTS / "attn-train", str(config), "--run-dir", str(run_dir), *options],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env=os.environ | {"HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        preexec_fn=as_in_a_terminal,
    )  # fmt: skip


def wait_for_step(run_dir: Path, step: int, process: subprocess.Popen) -> None:
    """Block until the run has logged training step ``step``."""
    deadline = time.monotonic() + TIMEOUT
    while not any(record["step"] >= step for record in read_metrics(run_dir, "train")):
        if process.poll() is not None:
            pytest.fail(process.communicate()[0][-3000:])
        assert time.monotonic() < deadline, "the run never reached the step"
        time.sleep(0.1)


def finish(process: subprocess.Popen) -> str:
    """Wait for ``process`` (killing its group on a hang); its output."""
    try:
        return process.communicate(timeout=TIMEOUT)[0]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(f"attn-train hung: {process.communicate()[0][-3000:]}")


@pytest.fixture
def endless(tmp_path, corpus) -> Path:
    """A config that trains until stopped, logging every step, checkpoints every 5 steps."""
    return write_config(
        tmp_path / "endless.yaml", corpus, "transformer", max_steps=100_000, validate_every=0,
        save_every=5, log_every=1,
    )  # fmt: skip


# ---- signals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sig", "to_group", "workers"),
    [
        (signal.SIGTERM, True, 2),  # what torchrun, Slurm and systemd do
        (signal.SIGHUP, False, 0),  # a closed terminal
        (signal.SIGUSR1, True, 1),  # Slurm's warning before the time limit
        (signal.SIGQUIT, False, 0),
    ],
    ids=["sigterm-group-workers", "sighup", "sigusr1-group-worker", "sigquit"],
)
def test_a_stop_signal_saves_last_pt(endless, tmp_path, sig, to_group, workers):
    run_dir = tmp_path / "run"
    process = start_training(endless, run_dir, "--set", f"data.num_workers={workers}")
    wait_for_step(run_dir, 3, process)
    (os.killpg if to_group else os.kill)(process.pid, sig)
    output = finish(process)
    assert process.returncode == 128 + sig, output
    assert f"stopped by {sig.name}" in output and "Traceback" not in output
    logged = max(record["step"] for record in read_metrics(run_dir, "train"))
    assert load_checkpoint(run_dir / LAST_FILE)["progress"]["step"] == logged
    assert not list(run_dir.glob(".*.tmp"))


def test_a_doubled_sigterm_still_saves(endless, tmp_path):
    run_dir = tmp_path / "run"
    process = start_training(endless, run_dir)
    wait_for_step(run_dir, 3, process)
    os.killpg(process.pid, signal.SIGTERM)  # Slurm's, then torchrun's forwarded one
    time.sleep(0.05)
    os.killpg(process.pid, signal.SIGTERM)
    output = finish(process)
    assert process.returncode == 143, output
    assert "interrupted" not in output
    logged = max(record["step"] for record in read_metrics(run_dir, "train"))
    assert load_checkpoint(run_dir / LAST_FILE)["progress"]["step"] == logged


def test_under_nohup_a_closed_terminal_does_not_stop_training(endless, tmp_path):
    run_dir = tmp_path / "run"
    process = start_training(endless, run_dir, prefix=("nohup",))
    wait_for_step(run_dir, 3, process)
    os.kill(process.pid, signal.SIGHUP)  # ignored, as nohup asked
    logged = max(record["step"] for record in read_metrics(run_dir, "train"))
    wait_for_step(run_dir, logged + 5, process)
    os.kill(process.pid, signal.SIGTERM)
    output = finish(process)
    assert process.returncode == 143 and "stopped by SIGTERM" in output, output


@pytest.fixture
def restored_sigint():
    """SIGINT handled as in a terminal for the test (the suite may run as a background job,
    which ignores it), and its handler as it was afterwards."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    signal.signal(signal.SIGINT, before)


def deliver(sig: signal.Signals) -> None:
    """Send ``sig`` to this process and let its handler run."""
    os.kill(os.getpid(), sig)
    time.sleep(0.05)


@pytest.mark.usefixtures("restored_sigint")
def test_repeated_signals_are_one_request_but_a_later_ctrl_c_quits(monkeypatch):
    with StopOnSignal() as stopper:
        deliver(signal.SIGTERM)
        assert stopper.event.is_set() and stopper.exit_code == 143
        deliver(signal.SIGTERM)  # again: the same request
        deliver(signal.SIGINT)  # at once after the first: a Ctrl-C torchrun forwarded
        assert stopper.received == signal.SIGTERM
        monkeypatch.setattr(stop_signals, "REPEAT_SECONDS", 0.0)
        with pytest.raises(KeyboardInterrupt):
            deliver(signal.SIGINT)  # a person who does not want to wait


@pytest.mark.usefixtures("restored_sigint")
def test_a_late_ctrl_c_waits_for_the_checkpoint_being_written(monkeypatch):
    monkeypatch.setattr(stop_signals, "REPEAT_SECONDS", 0.0)
    written = []
    with StopOnSignal():
        deliver(signal.SIGINT)
        with pytest.raises(KeyboardInterrupt), uninterrupted():
            deliver(signal.SIGINT)
            written.append("the rest of the checkpoint")
    assert written == ["the rest of the checkpoint"]


@pytest.mark.usefixtures("restored_sigint")
def test_a_ctrl_c_waiting_for_a_failed_write_is_not_raised_later(monkeypatch):
    monkeypatch.setattr(stop_signals, "REPEAT_SECONDS", 0.0)
    with StopOnSignal():
        deliver(signal.SIGINT)
        with pytest.raises(OSError), uninterrupted():
            deliver(signal.SIGINT)
            raise OSError(errno.ENOSPC, "No space left on device")
        with uninterrupted():  # no signal since: nothing to raise
            pass


# ---- the lock ----------------------------------------------------------------------------------


HOLD_LOCK = """
import sys, time
from pathlib import Path
from seq2seq_attn.rundir import locked_run_dir
with locked_run_dir(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_a_second_trainer_is_refused_and_a_killed_holder_frees_the_lock(tmp_path, corpus):
    config = write_config(tmp_path / "c.yaml", corpus, "rnn", max_steps=4)
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(run_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        refused = runner.invoke(train_app, [str(config), "--run-dir", str(run_dir)])
        assert refused.exit_code == 2
        said = " ".join(refused.output.split())
        assert f"another training is using this run directory (pid {holder.pid} on" in said
        assert sorted(path.name for path in run_dir.iterdir()) == [LOCK_FILE]  # nothing written
    finally:
        holder.kill()  # SIGKILL: the OS releases the lock
        holder.wait()
    result = runner.invoke(train_app, [str(config), "--run-dir", str(run_dir)])
    assert result.exit_code == 0, result.output


def test_two_trainers_on_one_folder_the_first_is_left_alone(endless, tmp_path):
    run_dir = tmp_path / "run"
    first = start_training(endless, run_dir, "--auto-resume")
    wait_for_step(run_dir, 6, first)
    second = subprocess.run(
        [SCRIPTS / "attn-train", str(endless), "--run-dir", str(run_dir), "--auto-resume"],
        capture_output=True, text=True, timeout=TIMEOUT,
        env=os.environ | {"HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert second.returncode == 2
    assert f"(pid {first.pid} on" in " ".join(second.stderr.split())
    steps_before = max(record["step"] for record in read_metrics(run_dir, "train"))
    wait_for_step(run_dir, steps_before + 3, first)  # the first trains on, its metrics intact
    os.kill(first.pid, signal.SIGTERM)
    finish(first)
    steps = [record["step"] for record in read_metrics(run_dir, "train")]
    assert steps == list(range(1, len(steps) + 1))


def test_a_second_new_run_is_refused_naming_the_holder_not_the_files(endless, tmp_path):
    run_dir = tmp_path / "run"
    first = start_training(endless, run_dir)
    wait_for_step(run_dir, 3, first)
    for options in ([], ["--resume"]):
        second = runner.invoke(train_app, [str(endless), "--run-dir", str(run_dir), *options])
        assert second.exit_code == 2
        assert f"another training is using this run directory (pid {first.pid} on" in " ".join(
            second.output.split()
        )
    os.kill(first.pid, signal.SIGTERM)
    finish(first)


def test_dataloader_workers_do_not_keep_the_lock_of_a_killed_trainer(endless, tmp_path):
    run_dir = tmp_path / "run"
    process = start_training(endless, run_dir, "--set", "data.num_workers=1")
    wait_for_step(run_dir, 3, process)
    os.kill(process.pid, signal.SIGKILL)  # its DataLoader worker lives on a few seconds
    process.wait()
    with locked_run_dir(run_dir):  # at once
        pass
    os.killpg(process.pid, signal.SIGKILL)  # the orphaned worker
    process.communicate()


def test_a_lock_file_removed_by_its_last_holder_is_not_locked(tmp_path, monkeypatch):
    from seq2seq_attn import rundir

    real_flock, removed = rundir.fcntl.flock, []

    def holder_lets_go_meanwhile(descriptor, operation):
        if not removed:  # between our open and our flock, the holder unlinks the file it made
            removed.append((tmp_path / "run" / LOCK_FILE).unlink())
        return real_flock(descriptor, operation)

    monkeypatch.setattr(rundir.fcntl, "flock", holder_lets_go_meanwhile)
    lock_file = tmp_path / "run" / LOCK_FILE
    with locked_run_dir(tmp_path / "run"):
        monkeypatch.setattr(rundir.fcntl, "flock", real_flock)
        assert removed and lock_file.read_text(encoding="utf-8").startswith(f"pid {os.getpid()}")
        descriptor = os.open(lock_file, os.O_RDONLY)  # the file there now is the one locked
        with pytest.raises(BlockingIOError):
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        os.close(descriptor)


def test_the_lock_is_reentrant_in_its_process(tmp_path):
    with locked_run_dir(tmp_path / "run"), locked_run_dir(tmp_path / "run"):
        holder = (tmp_path / "run" / LOCK_FILE).read_text(encoding="utf-8")
        assert holder.startswith(f"pid {os.getpid()} on ")


# ---- --auto-resume and temporaries ------------------------------------------------------------


def test_auto_resume_starts_a_run_setting_aside_what_a_failed_start_left(tmp_path, corpus):
    config = write_config(tmp_path / "c.yaml", corpus, "rnn", max_steps=6)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("written by a start that failed\n", encoding="utf-8")
    (run_dir / "train.log").write_text("the failed start's log\n", encoding="utf-8")
    plain = runner.invoke(train_app, [str(config), "--run-dir", str(run_dir), "--resume"])
    assert plain.exit_code == 2 and "nothing to resume" in plain.output
    result = runner.invoke(train_app, [str(config), "--run-dir", str(run_dir), "--auto-resume"])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(run_dir / LAST_FILE)["progress"]["step"] == 6
    (aside,) = (run_dir / "failed-starts").iterdir()
    assert (aside / "train.log").read_text(encoding="utf-8") == "the failed start's log\n"
    assert "failed start" not in (run_dir / "config.yaml").read_text(encoding="utf-8")
    again = runner.invoke(
        train_app, [str(config), "--run-dir", str(run_dir), "--auto-resume", "--set",
                    "train.max_steps=9"],
    )  # fmt: skip
    assert again.exit_code == 0, again.output
    assert "from step 6" in again.output
    assert load_checkpoint(run_dir / LAST_FILE)["progress"]["step"] == 9
    assert len(list((run_dir / "failed-starts").iterdir())) == 1  # nothing more set aside


def test_auto_resume_refuses_a_folder_holding_files_no_training_wrote(tmp_path, corpus):
    config = write_config(tmp_path / "c.yaml", corpus, "rnn", max_steps=2)
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "notes.md").write_text("mine\n", encoding="utf-8")
    (project / "train.log").write_text("a failed start\n", encoding="utf-8")
    result = runner.invoke(train_app, [str(config), "--run-dir", str(project), "--auto-resume"])
    assert result.exit_code == 2
    assert "files no training wrote are there (data, notes.md)" in " ".join(result.output.split())
    assert sorted(path.name for path in project.iterdir()) == ["data", "notes.md", "train.log"]


def test_a_start_sweeps_only_this_projects_temporaries(tmp_path, corpus):
    config = write_config(tmp_path / "c.yaml", corpus, "rnn", max_steps=6)
    run_dir = tmp_path / "run"
    assert runner.invoke(train_app, [str(config), "--run-dir", str(run_dir)]).exit_code == 0
    ours = [".last.pt.k2j4x_9a.tmp", ".step-00000012.pt.abcdefgh.tmp", ".config.yaml.00000000.tmp"]
    theirs = [".notes.txt.abcdefgh.tmp", "notes.tmp", ".last.pt.short.tmp"]
    for name in ours + theirs:
        (run_dir / name).write_bytes(b"half a checkpoint")
    resumed = runner.invoke(
        train_app, [str(config), "--run-dir", str(run_dir), "--resume", "--set",
                    "train.max_steps=7"],
    )  # fmt: skip
    assert resumed.exit_code == 0, resumed.output
    assert sorted(path.name for path in run_dir.glob("*.tmp")) == sorted(theirs)
    assert sweep_temporaries(run_dir) == []


def test_numbered_checkpoints_share_last_pt_and_are_pruned(tmp_path):
    for step in (5, 10, 15):
        write_atomic(tmp_path / LAST_FILE, f"checkpoint {step}".encode())  # as saves write it
        number_last(tmp_path, step, keep=2)
    assert list(numbered_checkpoints(tmp_path)) == [10, 15]
    newest = numbered_checkpoints(tmp_path)[15]
    assert os.path.samefile(newest, tmp_path / LAST_FILE)  # one inode: no second copy on disk
    assert numbered_checkpoints(tmp_path)[10].read_bytes() == b"checkpoint 10"


# ---- failures as one line ---------------------------------------------------------------------


def test_a_full_disk_during_a_save_is_one_line_saying_what_is_safe(tmp_path, corpus, monkeypatch):
    from seq2seq_attn import train as train_module

    config = write_config(tmp_path / "c.yaml", corpus, "rnn", max_steps=12, save_every=4)
    run_dir = tmp_path / "run"
    real_save, saves = train_module.save_checkpoint, []

    def disk_fills_up(state, path):
        saves.append(path.name)
        if len(saves) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_save(state, path)

    monkeypatch.setattr(train_module, "save_checkpoint", disk_fills_up)
    result = runner.invoke(train_app, [str(config), "--run-dir", str(run_dir)])
    assert result.exit_code == 1
    said = " ".join(result.output.split())
    assert "cannot write the checkpoint (No space left on device)" in said
    assert "last.pt of step 4 is intact" in said and "Traceback" not in result.output
    assert load_checkpoint(run_dir / LAST_FILE)["progress"]["step"] == 4


def test_a_file_as_run_dir_is_one_line(tmp_path, corpus):
    config = write_config(tmp_path / "c.yaml", corpus, "rnn")
    not_a_folder = tmp_path / "run"
    not_a_folder.write_text("a file\n", encoding="utf-8")
    for options in ([], ["--resume"], ["--auto-resume"]):
        result = runner.invoke(train_app, [str(config), "--run-dir", str(not_a_folder), *options])
        assert result.exit_code == 2, options
        assert "run: not a folder; --run-dir names" in " ".join(result.output.split())
    assert not_a_folder.read_text(encoding="utf-8") == "a file\n"


def test_resuming_on_changed_training_data_is_one_line(tmp_path, corpus):
    own = tmp_path / "corpus"
    own.mkdir()
    for name in ("train.src", "train.tgt", "dev.src", "dev.tgt"):
        (own / name).write_bytes((corpus / name).read_bytes())
    config = write_config(tmp_path / "c.yaml", own, "rnn", max_steps=4)
    run_dir = tmp_path / "run"
    assert runner.invoke(train_app, [str(config), "--run-dir", str(run_dir)]).exit_code == 0
    resume = [str(config), "--run-dir", str(run_dir), "--resume", "--set", "train.max_steps=8"]
    lines = (own / "train.src").read_text(encoding="utf-8").splitlines()
    stat = (own / "train.src").stat()
    edited = ["x" * len(lines[0]), *lines[1:]]  # the same size, the time put back
    (own / "train.src").write_text("\n".join(edited) + "\n", encoding="utf-8")
    os.utime(own / "train.src", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    result = runner.invoke(train_app, resume)
    assert result.exit_code == 2
    said = " ".join(result.output.split())
    assert "the training data changed since this checkpoint (the same number of pairs" in said
    (own / "train.src").write_text("\n".join([*lines, "one more"]) + "\n", encoding="utf-8")
    (own / "train.tgt").write_text(
        (corpus / "train.tgt").read_text(encoding="utf-8") + "one more\n", encoding="utf-8"
    )
    result = runner.invoke(train_app, resume)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "training pairs then" in " ".join(result.output.split())
    (own / "train.src").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (own / "train.tgt").write_bytes((corpus / "train.tgt").read_bytes())
    assert runner.invoke(train_app, resume).exit_code == 0


def test_a_repeat_arriving_inside_the_first_signals_handler_does_not_deadlock():
    stopper = StopOnSignal()

    class RepeatArrivesDuringSet(threading.Event):
        def set(self):
            with self._cond:  # holding the lock, as Event.set does, when the repeat lands
                stopper._handle(signal.SIGHUP, None)
                self._flag = True
                self._cond.notify_all()

    stopper.event = RepeatArrivesDuringSet()
    handler = threading.Thread(target=stopper._handle, args=(signal.SIGTERM, None), daemon=True)
    handler.start()
    handler.join(timeout=10)
    assert not handler.is_alive(), "the repeated signal deadlocked its handler"
    assert stopper.event.is_set() and stopper.received == signal.SIGTERM
