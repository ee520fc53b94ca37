"""One stop path for every signal that ends a training run: SIGINT (Ctrl-C), SIGTERM (``kill``,
Slurm, systemd, torchrun's forwarding), SIGHUP (a closed terminal), SIGQUIT (Ctrl-\\) and SIGUSR1
(what Slurm's ``--signal=USR1@SECONDS`` sends before a job's time limit).

:class:`StopOnSignal` turns the first such signal into a stop request (a ``threading.Event``
the training loop polls after each step; it then saves ``last.pt`` and returns). Further signals
are duplicates, and ignored: a job step gets SIGTERM from Slurm and again from torchrun, a
Ctrl-C in a terminal reaches every process of the group and torchrun forwards it once more. Only
a SIGINT typed again later than :data:`REPEAT_SECONDS` after the first one (a person who does
not want to wait) stops at once with ``KeyboardInterrupt`` — and never in the middle of a write
guarded by :func:`uninterrupted`: it takes effect when that write is complete.

A signal the process was started ignoring stays ignored (``nohup`` ignores SIGHUP, a shell
ignores SIGINT and SIGQUIT for a background ``cmd &``): such a run goes on when the terminal
closes, as its user asked.

DataLoader worker processes call :func:`ignore_stop_signals`: a signal sent to the whole
process group (``killpg``) must not kill them under the main process, which ends them itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1)
REPEAT_SECONDS = 2.0  # a second SIGINT sooner than this is the same request, delivered twice


class StopSignal(KeyboardInterrupt):
    """A stop signal raised where the program was (:func:`raising_stop_signals`)."""

    def __init__(self, sig: signal.Signals) -> None:
        super().__init__(sig.name)
        self.signal = sig


def exit_code(sig: signal.Signals) -> int:
    """The exit status of a process that ended on ``sig`` (128 + its number, as a shell shows)."""
    return 128 + int(sig)


def ignore_stop_signals(*_worker_id: object) -> None:
    """Ignore every stop signal in this process (a DataLoader ``worker_init_fn``), then let
    them in: those that arrived since it was forked under :func:`blocked_stop_signals` were
    held back and are now dropped."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@contextlib.contextmanager
def blocked_stop_signals() -> Iterator[None]:
    """Hold the stop signals back from this thread while the block runs (they are delivered
    when it ends): processes forked in the block start with them blocked, so that a signal to
    the process group cannot kill a DataLoader worker before it ignores them."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def raising_stop_signals() -> Iterator[None]:
    """While the block runs, the stop signals other than SIGINT (those not ignored) raise
    :class:`StopSignal` where the program is, as Ctrl-C raises ``KeyboardInterrupt``, so that
    the cleanups of the code they interrupt run (an unfinished output's temporary is
    deleted). For commands with no checkpoint to finish, such as ``attn-translate``."""

    def raise_it(signum: int, frame: object) -> None:
        raise StopSignal(signal.Signals(signum))

    previous = {
        sig: signal.signal(sig, raise_it)
        for sig in STOP_SIGNALS
        if sig != signal.SIGINT and signal.getsignal(sig) is not signal.SIG_IGN
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Writes:
    """How many :func:`uninterrupted` blocks are open, and whether an interrupt waits for them."""

    open_blocks = 0
    interrupt_waiting = False


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """A block (a checkpoint save) that an impatient second Ctrl-C does not break: the
    ``KeyboardInterrupt`` it asks for is raised when the block has completed."""
    _Writes.open_blocks += 1
    completed = False
    try:
        yield
        completed = True
    finally:
        _Writes.open_blocks -= 1
        waiting = _Writes.open_blocks == 0 and _Writes.interrupt_waiting
        if waiting:
            _Writes.interrupt_waiting = False
    if waiting and completed:  # a block that failed raises its own error instead
        raise KeyboardInterrupt


class StopOnSignal:
    """While the block runs, the first stop signal sets :attr:`event` (``received`` says which);
    see the module's docstring for the ones after it. Previous handlers come back afterwards,
    unless a stop was received and ``then_ignore``: a process that exits after the block then
    ignores the duplicates still arriving (rather than dying of one after its clean stop)."""

    def __init__(self, then_ignore: bool = False) -> None:
        self.then_ignore = then_ignore
        self.event = threading.Event()
        self.received: signal.Signals | None = None
        self._first_at = 0.0
        self._previous: dict[signal.Signals, object] = {}

    def __enter__(self) -> StopOnSignal:
        for sig in STOP_SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:  # nohup's SIGHUP, a `cmd &` SIGINT
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._previous.items():
            stopping = self.then_ignore and self.received is not None
            signal.signal(sig, signal.SIG_IGN if stopping else handler)

    @property
    def exit_code(self) -> int | None:
        """The exit status for the signal received (None: none was)."""
        return None if self.received is None else exit_code(self.received)

    def _handle(self, signum: int, frame: object) -> None:
        """A stop signal arrived (see the module's docstring). A repeat may interrupt this very
        handler anywhere: ``received`` is set before anything else, and a repeat takes no lock
        (a nested ``Event.set`` would wait forever for the one it interrupted)."""
        sig = signal.Signals(signum)
        if self.received is None:
            self._first_at = time.monotonic()  # before received: a repeat reads it
            self.received = sig
            self.event.set()
            if sig == signal.SIGHUP:
                _detach_from_terminal()
            logger.warning(
                "%s: stopping after this step and saving last.pt%s", sig.name,
                " (Ctrl-C again to quit at once)" if sig == signal.SIGINT else "",
            )  # fmt: skip
            return
        if sig != signal.SIGINT or time.monotonic() - self._first_at < REPEAT_SECONDS:
            return  # the same request again (Slurm and torchrun both send SIGTERM)
        if _Writes.open_blocks:
            _Writes.interrupt_waiting = True
            logger.warning("%s: quitting once the checkpoint being written is complete", sig.name)
            return
        raise KeyboardInterrupt


def _detach_from_terminal() -> None:
    """After SIGHUP the terminal is gone and writing to it fails: point the standard streams
    that were a terminal at ``/dev/null``, so that the stop can finish (``train.log`` keeps the
    record)."""
    null = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            if os.isatty(stream.fileno()):
                os.dup2(null, stream.fileno())
    os.close(null)
