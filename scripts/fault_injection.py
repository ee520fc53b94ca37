"""Fault injection: signal, kill, double-start and fill the disk under a training run as a
person, torchrun, Slurm or the OOM killer would; check after each fault that nothing was
corrupted and that the same command (``attn-train --auto-resume``) carries the run on.

Each round starts ``attn-train CONFIG --run-dir RUN --auto-resume`` (``--nproc 2``: under
torchrun), waits a random number of steps past where it resumed (or a random moment of its
start-up, or for sigkill a save) and injects one fault of KINDS, round-robin (random with
--seed). Checked after each: the exit status; no "Traceback" from the package's processes;
steps lost (0 after a stop signal, at most save_every otherwise); temporaries swept by the next
start; every checkpoint loading with weights_only=True; no process of the start left; the next
start resuming from last.pt's step. At the end the run finishes and translates the dev set.
With disk-full, RUN is on a 64 MiB tmpfs (root only). Usage and results: docs/robustness.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from seq2seq_attn.checkpoint import CheckpointError, load_checkpoint
from seq2seq_attn.config import config_from_plain, to_yaml
from seq2seq_attn.fileio import temporary_target
from seq2seq_attn.rundir import LAST_FILE, read_metrics

BIN = Path(sys.executable).parent
TOY = Path(__file__).resolve().parents[1] / "data" / "toy"
SAVE_EVERY = 20  # steps between checkpoints: what a kill may lose at most
FINAL_STEPS = 10  # how far the last start trains past last.pt, ending the run
TIMEOUT = 240  # seconds a start may take to reach the moment of its fault
ENDING = 60  # seconds a start may take to end after its fault before it counts as hung
LEAVE_FREE = 128 * 1024  # bytes left free on the full disk: less than a checkpoint (~700 kB)
STARTUP_SHARE, SAVE_SHARE = 0.2, 0.4  # how often a fault comes during start-up / a save
ENVIRONMENT = os.environ | {"OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1"}
SIGNALS = {
    "sigint": signal.SIGINT, "sigterm": signal.SIGTERM, "sigterm-group": signal.SIGTERM,
    "sighup": signal.SIGHUP, "sigkill": signal.SIGKILL, "double-sigterm": signal.SIGTERM,
    "second-trainer": signal.SIGTERM,
}  # fmt: skip
KINDS = (*SIGNALS, "disk-full")
# faults that may also come during start-up (a Ctrl-C while Python imports shows its trace)
STARTUP_KINDS = {"sigterm", "sigterm-group", "sighup", "sigkill", "double-sigterm"}
DISK_FULL = "cannot write the checkpoint (No space left on device); nothing was corrupted"
MARK = "FAULT_INJECTION_START"  # in the environment of every process of one start
HOLDER = re.compile(r"another training is using this run directory \(pid (\d+) on ")
COLUMNS = ("fault", "injections", "at start-up / in a save", "expected exit", "resumes continued",
           "max steps lost", "temporaries after fault", "temporaries after resume",
           "checkpoints failing to load", "tracebacks", "processes left")  # fmt: skip
COUNTED = ("temporaries", "temporaries_kept", "failed_loads", "tracebacks", "processes_left")


def package_tracebacks(output: str, kind: str) -> int:
    """Tracebacks in ``output``, but those of DataLoader workers a SIGKILL orphaned."""
    traces = output.split("Traceback")[1:]  # their resource sharer loses its connection:
    return sum(not (kind == "sigkill" and "resource_sharer.py" in t) for t in traces)


def last_step(run_dir: Path) -> int | None:
    """The step of ``run_dir``'s last.pt (None: there is none)."""
    path = run_dir / LAST_FILE
    return int(load_checkpoint(path)["progress"]["step"]) if path.is_file() else None


def logged_step(run_dir: Path) -> int:
    """The highest training step in ``run_dir``'s metrics.jsonl (0: none yet)."""
    return max((record["step"] for record in read_metrics(run_dir, "train")), default=0)


def loads(path: Path) -> bool:
    """Whether the checkpoint ``path`` loads with ``weights_only=True`` (saying why not)."""
    try:
        return isinstance(load_checkpoint(path), dict)
    except CheckpointError as error:
        print(f"  {error}")
        return False


def members(mark: str) -> list[int]:
    """The live processes of the start marked ``mark`` (an environment variable they inherit:
    torchrun starts each rank in a session of its own, orphans lose their parent)."""
    found, entry = [], f"{MARK}={mark}".encode()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError):  # ended meanwhile (a zombie's environment is empty)
            if entry in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
    return found


def signal_all(mark: str, sig: signal.Signals) -> int:
    """Send ``sig`` to every process of the start marked ``mark``, as Slurm does; how many."""
    pids = members(mark)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    return len(pids)


def settle(mark: str, patience: float = 30.0) -> int:
    """Wait for the processes of the start marked ``mark`` to end; kill and count those left."""
    deadline = time.monotonic() + patience
    while members(mark) and time.monotonic() < deadline:
        time.sleep(0.2)
    return signal_all(mark, signal.SIGKILL)


@dataclass
class Round:
    """One fault and what was found after it."""

    kind: str
    moment: str  # when the fault came: "step", "start-up" or "save"
    fault_held: bool = True  # the fault's own check (second-trainer: refused, first unharmed)
    exit_code: int | None = None  # 128 + N when killed by signal N; None: hung
    expected: bool = False
    tracebacks: int = 0
    last_before: int | None = None
    last_after: int | None = None
    logged: int = 0
    temporaries: int = 0  # unfinished writes the fault left in the run directory
    temporaries_kept: int = 0  # of those, still there after the next start
    failed_loads: int = 0
    continued: bool | None = None  # whether the next start resumed from last.pt's step
    processes_left: int = 0
    steps_lost: int = 0  # trained steps the next start trains again: logged - last.pt's step


def expected_codes(kind: str, nproc: int, at_startup: bool) -> set[int]:
    """The exit statuses a fault of ``kind`` should end the command with."""
    if kind in ("disk-full", "finish"):
        return {1 if kind == "disk-full" else 0}
    code = 128 + SIGNALS[kind]  # what attn-train exits with, or dies of before its handlers
    if kind == "sigkill" or nproc == 1:
        return {code}
    return {1, code} if at_startup else {1}  # torchrun exits 1 when a signal stopped it


def last_words(record: Round) -> str:
    """What the package's processes must have said after the fault ("" for nothing)."""
    if record.kind == "disk-full":
        return DISK_FULL
    silent = record.kind in ("sigkill", "finish") or record.moment == "start-up"
    return "" if silent else f"stopped by {SIGNALS[record.kind].name}"


class Harness:
    """The rounds of one session over one run directory."""

    def __init__(self, args: argparse.Namespace, work: Path, run_dir: Path):
        self.args, self.work, self.run_dir = args, work, run_dir
        self.rng = random.Random(args.seed)
        self.corpus = make_corpus(work / "corpus")
        self.config = write_config(work / "fault-injection.yaml", self.corpus)
        self.filler = run_dir.parent / "filler"  # beside the run directory, on the same disk
        self.startup_seconds = 3.0  # from launch to the first step: measured as rounds go
        self.rounds, self.pending = [], []  # all, and those whose next start did not resume yet
        self.swept: dict[str, Round] = {}  # temporaries the next start must sweep
        self.launcher_tracebacks = 0  # torchrun's own (SignalException, ChildFailedError)
        self.process: subprocess.Popen | None = None  # the current start (a group of its own)

    def launch(self, *settings: str) -> None:
        """Start ``attn-train --auto-resume`` (--nproc 2: torchrun, each rank's output apart)."""
        logs = self.work / "logs" / f"start-{len(self.rounds):03d}"
        logs.mkdir(parents=True)
        train = [str(BIN / "attn-train"), str(self.config), "--run-dir", str(self.run_dir)]
        command = [*train, "--auto-resume", *settings]
        if self.args.nproc > 1:
            command = [
                str(BIN / "torchrun"), "--standalone", "--nproc_per_node", str(self.args.nproc),
                "--redirects", "3", "--log-dir", str(logs / "workers"), *command,
            ]  # fmt: skip
        self.resume_step, self.output = last_step(self.run_dir) or 0, logs / "output.txt"
        self.mark = f"{os.getpid()}-{len(self.rounds)}"  # in its processes' environment
        self.worker_logs = logs / "workers" if self.args.nproc > 1 else None
        with self.output.open("wb") as output:
            self.started = time.monotonic()
            self.process = subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
                env=ENVIRONMENT | {MARK: self.mark},
            )  # fmt: skip

    def package_output(self) -> str:
        """What the package's training processes of the current start printed so far."""
        logs = [self.output] if self.worker_logs is None else self.worker_logs.rglob("*.log")
        return "".join(path.read_text(errors="replace") for path in sorted(logs))

    def start_step(self) -> int | None:
        """The step the current start went on from ("from step N"; None before that line)."""
        found = re.search(r"from step (\d+)", self.package_output())
        return None if found is None else int(found.group(1))

    def play(self, kind: str) -> Round:
        """One round: start, wait for the moment, inject ``kind``, check what is left."""
        self.launch()
        draw = self.rng.random()
        moment = "start-up" if kind in STARTUP_KINDS and draw < STARTUP_SHARE else "step"
        if kind == "sigkill" and STARTUP_SHARE <= draw < STARTUP_SHARE + SAVE_SHARE:
            moment = "save"
        record = Round(kind, moment)
        if self.reach(record):
            self.inject(record)
        self.conclude(record)
        return record

    def wait(self, condition: Callable[[], bool], poll: float = 0.1) -> bool:
        """Wait until ``condition`` holds; False when the start ended first or took too long."""
        deadline = time.monotonic() + TIMEOUT
        while not condition():
            if self.process.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(poll)
        return True

    def reach(self, record: Round) -> bool:
        """Wait for the moment of the fault, noting last.pt's step; False if the start ended."""
        if record.moment == "start-up":
            record.last_before = self.resume_step or None
            moment = time.monotonic() + self.rng.uniform(0, self.startup_seconds)
            return self.wait(lambda: time.monotonic() >= moment, poll=0.01)
        if not self.wait(lambda: self.start_step() is not None):
            return False
        self.startup_seconds = time.monotonic() - self.started
        start = self.start_step() or 0
        if record.moment == "save":
            record.last_before = last_step(self.run_dir)
            return self.catch_save(record, start)
        target = start + self.rng.randint(1, 2 * SAVE_EVERY)
        reached = self.wait(lambda: logged_step(self.run_dir) >= target)
        record.last_before = last_step(self.run_dir)
        return reached

    def catch_save(self, record: Round, start: int) -> bool:
        """Wait for last.pt's temporary (a save); three intervals without one: at a step."""
        prefix, polls = f".{LAST_FILE}.", 0
        while not any(name.startswith(prefix) for name in os.listdir(self.run_dir)):
            polls += 1
            if polls % 200 == 0 and (
                self.process.poll() is not None
                or logged_step(self.run_dir) >= start + 3 * SAVE_EVERY
            ):
                record.moment = "step"
                return self.process.poll() is None
            time.sleep(0.0005)
        return True

    def inject(self, record: Round) -> None:
        """Inject the fault ``record.kind`` into the running start."""
        kind, pid = record.kind, self.process.pid
        with contextlib.suppress(ProcessLookupError):  # it may have ended just now
            if kind == "second-trainer":
                record.fault_held = self.second_trainer(record)
                os.kill(pid, signal.SIGTERM)
            elif kind == "disk-full":
                stats = os.statvfs(self.run_dir)
                with self.filler.open("wb") as filler:
                    free = stats.f_bavail * stats.f_frsize
                    os.posix_fallocate(filler.fileno(), 0, free - LEAVE_FREE)
            elif kind == "double-sigterm":  # Slurm's, then torchrun's forwarded one
                signal_all(self.mark, signal.SIGTERM)
                time.sleep(0.05)
                signal_all(self.mark, signal.SIGTERM)
            elif kind == "sigterm-group" or (kind == "sigkill" and self.args.nproc > 1):
                signal_all(self.mark, SIGNALS[kind])
            else:
                os.kill(pid, SIGNALS[kind])

    def second_trainer(self, record: Round) -> bool:
        """A second trainer must exit 2 naming the lock's holder; the first must train on."""
        second = subprocess.run(
            [BIN / "attn-train", self.config, "--run-dir", self.run_dir, "--auto-resume"],
            capture_output=True, text=True, env=ENVIRONMENT, timeout=TIMEOUT,
        )  # fmt: skip
        said = " ".join((second.stdout + second.stderr).split())
        record.tracebacks += said.count("Traceback")
        holder = HOLDER.search(said)
        if second.returncode != 2 or holder is None:
            print(f"  the second trainer: exit {second.returncode}: {said[-500:]}")
            return False
        named = int(holder.group(1)) in members(self.mark)  # under torchrun: rank 0
        target = logged_step(self.run_dir) + 3
        return named and self.wait(lambda: logged_step(self.run_dir) >= target)

    def conclude(self, record: Round) -> None:
        """After the start ended (or hung: killed, exit None), record what the fault left."""
        try:
            code = self.process.wait(timeout=ENDING)
            record.exit_code = 128 - code if code < 0 else code
        except subprocess.TimeoutExpired:
            signal_all(self.mark, signal.SIGKILL)
            self.process.wait()
        record.processes_left = settle(self.mark)
        self.filler.unlink(missing_ok=True)  # a full disk for that start only
        output = self.package_output()
        self.check_resume()
        record.tracebacks += package_tracebacks(output, record.kind)
        launcher = self.output.read_text(errors="replace") if self.worker_logs else ""
        self.launcher_tracebacks += "Traceback" in launcher
        codes = expected_codes(record.kind, self.args.nproc, record.moment == "start-up")
        held = record.fault_held and record.exit_code in codes
        record.expected = held and last_words(record) in " ".join(output.split())  # rich wraps
        record.last_after, record.logged = last_step(self.run_dir), logged_step(self.run_dir)
        record.steps_lost = record.logged - (record.last_after or 0)
        left = [path.name for path in self.run_dir.glob(".*") if temporary_target(path.name)]
        record.temporaries = len(left)
        record.failed_loads = sum(not loads(path) for path in self.run_dir.rglob("*.pt"))
        self.pending.append(record)
        self.swept.update(dict.fromkeys(left, record))
        self.rounds.append(record)

    def check_resume(self) -> None:
        """Whether the start resumed from last.pt's step and swept the earlier temporaries."""
        start = self.start_step()
        if start is None:  # stopped before that: the next start answers for it
            return
        for record in self.pending:
            record.continued = start == self.resume_step
        for name, record in self.swept.items():
            record.temporaries_kept += (self.run_dir / name).exists()
        self.pending, self.swept = [], {}


def make_corpus(directory: Path) -> Path:
    """400 training and 20 dev pairs of the toy corpus in ``directory`` (``train.src`` ...)."""
    directory.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", 400), ("dev", 20)):
        for side in ("src", "tgt"):
            lines = (TOY / f"{split}.{side}").read_text(encoding="utf-8").splitlines()[:count]
            (directory / f"{split}.{side}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


def write_config(path: Path, corpus: Path) -> Path:
    """A tiny Transformer (d_model 32, 1 + 1 layers, fp32, CPU) that trains until stopped,
    logging every step, saving every SAVE_EVERY steps, with 2 DataLoader workers."""
    config = config_from_plain({
            "data": {"src_lang": "src", "tgt_lang": "tgt", "train": str(corpus / "train"),
                     "dev": str(corpus / "dev"), "test": "", "max_tokens": 256, "max_length": 40,
                     "cache_dir": str(corpus / "cache"), "num_workers": 2},
            "tokenizer": {"vocab_size": 64}, "decode": {"max_length_offset": 3},
            "model": {"family": "transformer", "max_positions": 64,
                      "transformer": {"d_model": 32, "num_heads": 4, "encoder_layers": 1,
                                      "decoder_layers": 1, "ff_size": 64}},
            "train": {"max_steps": 1_000_000, "validate_every": 2 * SAVE_EVERY,
                      "save_every": SAVE_EVERY, "log_every": 1, "warmup_steps": 5, "lr": 3e-3,
                      "precision": "fp32", "device": "cpu"},
    })  # fmt: skip
    path.write_text(to_yaml(config), encoding="utf-8")
    return path


def translates(run_dir: Path, corpus: Path) -> bool:
    """Whether the finished run's model translates the dev source: one non-empty line each."""
    source, output = corpus / "dev.src", run_dir.parent / "dev.out"
    command = [BIN / "attn-translate", run_dir, source, "-o", output]
    result = subprocess.run(command, capture_output=True, env=ENVIRONMENT, timeout=ENDING)
    if result.returncode != 0:
        print(f"attn-translate: exit {result.returncode}: {result.stderr.decode()[-1000:]}")
        return False
    lines = output.read_text(encoding="utf-8").splitlines()
    expected = len(source.read_text(encoding="utf-8").splitlines())
    return len(lines) == expected and all(line.strip() for line in lines)


@contextlib.contextmanager
def run_filesystem(work: Path) -> Iterator[Path | None]:
    """A 64 MiB tmpfs for the run directory, unmounted at the end; None if mounting fails."""
    mount_point = work / "tmpfs"
    mount_point.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount_point)]
    mounted = subprocess.run(command, capture_output=True, text=True)
    if mounted.returncode != 0:
        print(f"cannot mount a tmpfs: {mounted.stderr.strip()}; disk-full is skipped")
        yield None
        return
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def table(rounds: list[Round], nproc: int) -> str:
    """The markdown table: one row per fault kind and a total row."""
    kinds = [kind for kind in KINDS if any(r.kind == kind for r in rounds)]
    groups = [(kind, [r for r in rounds if r.kind == kind]) for kind in kinds]
    lines = [COLUMNS, ["---"] * len(COLUMNS)]
    for label, group in [*groups, ("total", rounds)]:
        codes = sorted({c for r in group for c in expected_codes(r.kind, nproc, False)})
        codes_text = "" if label == "total" else f" ({', '.join(map(str, codes))})"
        checked = [r for r in group if r.continued is not None]
        early = [sum(r.moment == moment for r in group) for moment in ("start-up", "save")]
        lines.append([
            label, str(len(group)), f"{early[0]} / {early[1]}",
            f"{sum(r.expected for r in group)}/{len(group)}{codes_text}",
            f"{sum(r.continued for r in checked)}/{len(checked)}",
            str(max((r.steps_lost for r in group), default=0)),
            *(str(sum(getattr(r, name) for r in group)) for name in COUNTED),
        ])  # fmt: skip
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def violations(rounds: list[Round]) -> list[str]:
    """Every failed check, one line each, naming the round."""
    found = []
    for index, r in enumerate(rounds, 1):
        graceful = r.kind not in ("sigkill", "disk-full") and r.moment != "start-up"
        most = 0 if graceful else SAVE_EVERY  # a stop signal during training loses no step
        checks = {
            f"exit {r.exit_code} is not the expected one": not r.expected,
            "the next start did not resume from last.pt": r.continued is False,
            f"{r.steps_lost} steps lost (at most {most})": r.steps_lost > most,
            f"{r.temporaries_kept} temporaries not swept": r.temporaries_kept > 0,
            f"{r.failed_loads} checkpoints fail to load": r.failed_loads > 0,
            f"{r.tracebacks} tracebacks": r.tracebacks > 0,
            f"{r.processes_left} processes left": r.processes_left > 0,
        }
        where = f"round {index} ({r.kind}, {r.moment})"
        found += [f"{where}: {what}" for what, bad in checks.items() if bad]
    return found


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module's docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--injections", type=int, default=50, help="faults to inject (default 50)")
    add("--nproc", type=int, choices=(1, 2), default=1, help="2: attn-train under torchrun")
    add("--seed", type=int, help="draw the kinds at random from this seed (default round-robin)")
    add("--kinds", default=",".join(KINDS), help=f"comma-separated, of {','.join(KINDS)}")
    add("--work-dir", type=Path, help="make the session's work folder in here (default /tmp)")
    add("--keep", action="store_true", help="keep the work folder: corpus, config, run, logs")
    args = parser.parse_args(argv)
    args.kinds = [kind.strip() for kind in args.kinds.split(",") if kind.strip()]
    if unknown := [kind for kind in args.kinds if kind not in KINDS]:
        parser.error(f"--kinds: unknown {', '.join(unknown)}; choose among {', '.join(KINDS)}")
    return args


def run_session(args: argparse.Namespace, work: Path) -> list[str]:
    """Mount, inject the faults, let the run end, print the table; the failed checks."""
    with run_filesystem(work) if "disk-full" in args.kinds else contextlib.nullcontext() as tmpfs:
        kinds = [kind for kind in args.kinds if tmpfs is not None or kind != "disk-full"]
        harness = Harness(args, work, (tmpfs or work) / "run")
        try:
            for index in range(args.injections):
                kind = kinds[index % len(kinds)] if args.seed is None else harness.rng.choice(kinds)
                r = harness.play(kind)
                print(f"{index + 1}/{args.injections} {kind} ({r.moment}): exit {r.exit_code}"
                      f"{'' if r.expected else ' UNEXPECTED'}, last.pt {r.last_before} -> "
                      f"{r.last_after}, logged {r.logged}", flush=True)  # fmt: skip
            final, steps = Round("finish", "end"), (last_step(harness.run_dir) or 0) + FINAL_STEPS
            harness.launch("--set", f"train.max_steps={steps}")
            harness.conclude(final)
            finished = final.expected and translates(harness.run_dir, harness.corpus)
        finally:
            if harness.process is not None:  # after an error in the harness: kill what is left
                signal_all(harness.mark, signal.SIGKILL)
            if args.keep and tmpfs is not None:  # before the tmpfs goes
                shutil.copytree(harness.run_dir, work / "run", symlinks=True)
    rounds = harness.rounds[:-1]
    print(
        f"\n{table(rounds, args.nproc)}\n\nthe run ended at step {final.last_after} "
        f"(exit {final.exit_code}); finished run translates: {'yes' if finished else 'no'}"
    )
    if args.nproc > 1:
        print(f"torchrun's own tracebacks: {harness.launcher_tracebacks} of {len(rounds) + 1} runs")
    failed = violations(harness.rounds)
    return failed if finished else [*failed, "the finished run does not translate the dev set"]


def main(argv: list[str] | None = None) -> int:
    """Run the session in a work folder; 0 when every check held, else 1."""
    args = parse_args(argv)
    # trainers start with Ctrl-C's default action, as from a terminal (not a background job's)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    Path(args.work_dir or tempfile.gettempdir()).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fault-injection-", dir=args.work_dir))
    try:
        failed = run_session(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        if args.keep:
            print(f"the work folder {work} is kept")
    print("\n".join(["", *failed]) if failed else "every check held")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
