"""Load on attn-serve: sentences/s and latency of one-sentence requests from concurrent clients,
against the batch ceiling of ``attn-translate`` on the same lines.

The first ``--requests`` lines of ``--src`` (default: all) are translated

- by ``attn-translate MODEL LINES -o OUT`` in one process, the batch ceiling: its translation
  time is its wall time minus that of the same command on an empty file (start-up and model
  loading; run once before, untimed, to warm the file cache, and once after); OUT's lines are
  the reference answers;
- by ``attn-serve`` on 127.0.0.1, once per ``--batching`` mode (``stream``: ``--streaming``,
  new requests join running searches between their steps; ``whole``: each request waits for a
  whole-batch search, attn-serve's default), started and warmed up with one request: for each
  count C of ``--clients``, C client threads share a line counter, and each POSTs
  ``{"text": [line]}`` for the next line over its own keep-alive connection until the lines or
  ``--max-seconds`` run out (a request unanswered by then is an error). /v1/health before and
  after the round gives the batch that dynamic batching reached (mean sentences per search step
  when streaming, per search otherwise) and the share of the round the model worker was busy
  (its ``busy_seconds``, counted as each search or step ends, over the round's wall time: near
  1, requests are there whenever the worker is free, so the round's rate is the rate of the
  searches the clients' requests make up; well below, the worker waits for requests);
- with ``--rates R ...``, also open-loop rounds, after the closed-loop ones: requests sent at
  the times of a Poisson process of R requests a second (seeded: the same times for every
  mode), as independent users would send them, whether or not earlier ones were answered, by a
  pool of ``SENDERS`` connections; a request's latency counts from its scheduled time, so a
  pool too small for the load shows as latency, not as a lower rate.

The clients run in this process and share the cores with the server (2 on the issue's CPU), so
they are kept light: one connection each, a fixed header, ``json.dumps`` of one line. Below the
table: whether the issue's targets hold at the largest client count (at least half the
ceiling's sentences/s, p99 under 1 s, every request answered, every answer equal to the
ceiling's line). The server is stopped with SIGTERM and must exit 0. Exit status 0 when measured
(targets met or not), 1 when the harness failed::

    python scripts/bench_serve.py runs/multi30k-de-en/transformer --clients 1 8 32 \
        --batching stream whole
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from seq2seq_attn.corpus import read_lines

BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
START_SECONDS = 300  # most seconds attn-serve may take to load the model and listen
STOP_SECONDS = 120  # most seconds it may take to exit after SIGTERM
HEADERS = {"Content-Type": "application/json", "Connection": "keep-alive"}
MODES = {"stream": "streaming", "whole": "whole batches"}  # --batching: the rows' names
SENDERS = 64  # connections of an open-loop round (--rates)


@dataclass
class Work:
    """The lines of a round, handed out one index at a time until they or ``seconds`` from
    the round's start run out; ``options``: what each request adds to its ``text``."""

    lines: list[str]
    options: dict
    seconds: float
    offsets: list[float] | None = None  # open loop: when to send each line, after the start
    rate: float | None = None  # open loop: the Poisson process's requests a second
    start: float = 0.0  # set when the round starts
    deadline: float = math.inf  # set when the round starts
    taken: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> int | None:
        """The next line index, or None when every line was sent or the time is up (open
        loop: when the next line is due after the deadline)."""
        with self.lock:
            if self.taken == len(self.lines) or time.perf_counter() >= self.deadline:
                return None
            if self.offsets is not None and self.start + self.offsets[self.taken] >= self.deadline:
                return None
            self.taken += 1
            return self.taken - 1

    def due(self, index: int) -> float:
        """When line ``index`` is to be sent (closed loop: now); an open-loop sender sleeps
        until then. Its latency counts from this time."""
        if self.offsets is None:
            return time.perf_counter()
        due = self.start + self.offsets[index]
        time.sleep(max(due - time.perf_counter(), 0.0))
        return due

    @classmethod
    def poisson(cls, lines: list[str], options: dict, seconds: float, rate: float) -> Work:
        """Open-loop work: the lines sent at the arrival times of a Poisson process of ``rate``
        requests a second (seeded, so every mode gets the same times)."""
        draw, offsets, elapsed = random.Random(0), [], 0.0
        for _ in lines:
            elapsed += draw.expovariate(rate)
            offsets.append(elapsed)
        return cls(lines, options, seconds, offsets, rate)


@dataclass
class ClientLog:
    """What one client saw: latencies of answered requests (s), errors, answers by index."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    answers: dict[int, str] = field(default_factory=dict)


@dataclass
class Row:
    """One line of the table (``clients`` None: the batch ceiling)."""

    name: str
    sent: int
    answered: int
    errors: int
    differing: int | None
    rate: float | None  # sentences/s
    clients: int | None = None  # closed-loop clients (None: the ceiling, an open-loop round)
    offered: float | None = None  # an open-loop round's requests a second
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    per_batch: float | None = None  # mean sentences per search step (streaming) or search
    busy: float | None = None  # share of the round's wall time the model worker was busy


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path, help="a checkpoint or run directory")
    parser.add_argument("--src", type=Path, default=Path("data/multi30k/test_2016_flickr.de"))
    parser.add_argument("--clients", type=int, nargs="*", default=[1, 8, 32])
    parser.add_argument(
        "--rates", type=float, nargs="+", default=[], help="open-loop requests/s rounds [none]"
    )
    parser.add_argument("--requests", type=int, help="most requests a round [every line]")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="per round")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of both")
    parser.add_argument("--serve-threads", type=int, help="attn-serve's only [--threads]")
    parser.add_argument("--beam", type=int, help="beam size [the model's]")
    parser.add_argument("--precision", help="fp32, bf16... [attn-translate's default]")
    parser.add_argument("--batch-wait-ms", type=float, help="attn-serve's [its default]")
    parser.add_argument(
        "--batching",
        nargs="+",
        choices=["stream", "whole"],
        default=["whole"],
        help="attn-serve's modes to measure, each with its own server [whole: its default]",
    )
    parser.add_argument("--port", type=int, help="[a free one]")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if not args.clients and not args.rates:
        parser.error("--clients, --rates: give at least one round")
    if min(args.clients, default=1) < 1 or (args.requests is not None and args.requests < 1):
        parser.error("--clients and --requests: use 1 or more")
    if not all(rate > 0 for rate in args.rates):
        parser.error("--rates: use more than 0")
    if args.threads < 1 or (args.serve_threads is not None and args.serve_threads < 1):
        parser.error("--threads and --serve-threads: use 1 or more")
    if not args.max_seconds > 0:
        parser.error("--max-seconds: use more than 0")
    return args


def flag(name: str, value: object) -> list[str]:
    """``[name, value]`` for an option given, ``[]`` for None."""
    return [] if value is None else [name, str(value)]


def timed_run(command: list[str], env: dict[str, str]) -> float:
    """Wall seconds of ``command``; its failure is a harness failure."""
    start = time.perf_counter()
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr.decode()[-2000:]}")
    return time.perf_counter() - start


def batch_ceiling(args: argparse.Namespace, lines: list[str], scratch: Path) -> tuple[Row, list]:
    """attn-translate on ``lines`` in one process: its row and its output lines."""
    source, empty, out = scratch / "src.txt", scratch / "empty.txt", scratch / "out.txt"
    source.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    empty.write_text("", encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    options = [*flag("--beam", args.beam), *flag("--precision", args.precision)]
    command = [str(BIN / "attn-translate"), str(args.model)]
    idle = [*command, str(empty), "-o", str(scratch / "empty.out"), *options]
    timed_run(idle, env)  # warms the file cache for the timed runs
    total = timed_run([*command, str(source), "-o", str(out), *options], env)
    start_up = timed_run(idle, env)
    reference = read_lines(out)
    if len(reference) != len(lines):
        raise SystemExit(f"attn-translate wrote {len(reference)} lines for {len(lines)}")
    print(f"batch ceiling: {total:.2f} s, {start_up:.2f} s of it start-up", file=sys.stderr)
    rate = len(lines) / (total - start_up) if total > start_up else None  # None: unmeasurable
    return Row("attn-translate (batch ceiling)", len(lines), len(lines), 0, None, rate), reference


def start_server(args: argparse.Namespace, mode: str, port: int, log: Path) -> subprocess.Popen:
    """attn-serve on 127.0.0.1:``port`` in batching ``mode``, its stderr into ``log``."""
    threads = args.serve_threads or args.threads
    command = [str(BIN / "attn-serve"), str(args.model), "--host", HOST, "--port", str(port),
               "--threads", str(threads), *flag("--precision", args.precision),
               *flag("--batch-wait-ms", args.batch_wait_ms),
               "--streaming" if mode == "stream" else "--no-streaming"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with log.open("wb") as handle:
        return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=handle)


def wait_until_listening(server: subprocess.Popen, port: int, log: Path) -> None:
    """Return once the server announced ``http://127.0.0.1:PORT`` and /v1/health is ok."""
    deadline = time.monotonic() + START_SECONDS
    while f"http://{HOST}:{port}" not in log.read_text(errors="replace"):
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"attn-serve did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.2)
    if health(port)["status"] != "ok":
        raise SystemExit("attn-serve: /v1/health is not ok")


def health(port: int) -> dict:
    """GET /v1/health."""
    connection = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        connection.request("GET", "/v1/health")
        return json.loads(connection.getresponse().read())
    finally:
        connection.close()


def client(port: int, work: Work, log: ClientLog) -> None:
    """POST one line a request over one keep-alive connection until ``work`` runs out."""
    connection = http.client.HTTPConnection(HOST, port, timeout=work.seconds)
    while (index := work.take()) is not None:
        body = json.dumps({"text": [work.lines[index]], **work.options}).encode()
        start, answer = work.due(index), None
        try:
            connection.request("POST", "/v1/translate", body, HEADERS)
            response = connection.getresponse()
            data = response.read()
            if response.status == 200:
                answer = json.loads(data)["translations"][0]["translation"]
        except (OSError, http.client.HTTPException, ValueError, LookupError):
            connection.close()  # the next request opens a new connection
        if answer is None:
            log.errors += 1
            continue
        log.latencies.append(time.perf_counter() - start)
        log.answers[index] = answer
    connection.close()


def load_round(port: int, count: int, work: Work, reference: list[str], mode: str) -> Row:
    """``count`` clients (open loop: senders) on ``work`` against a server in batching
    ``mode``: the round's row."""
    logs = [ClientLog() for _ in range(count)]
    threads = [threading.Thread(target=client, args=(port, work, log)) for log in logs]
    before, start = health(port), time.perf_counter()
    work.start, work.deadline = start, start + work.seconds
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds, after = time.perf_counter() - start, health(port)
    latencies = sorted(latency * 1000 for log in logs for latency in log.latencies)
    answers = {index: text for log in logs for index, text in log.answers.items()}
    batches, held = ("steps", "step_sentences") if mode == "stream" else ("searches", "sentences")
    batches, held = after[batches] - before[batches], after[held] - before[held]
    offered = work.rate
    load = f"{count} clients" if offered is None else f"open loop, {offered:g} requests/s"
    print(f"{mode}, {load}: {len(answers)} answered in {seconds:.2f} s", file=sys.stderr)
    return Row(
        f"attn-serve ({MODES[mode]}), {load}", work.taken, len(answers),
        sum(log.errors for log in logs),
        sum(text != reference[index] for index, text in answers.items()), len(answers) / seconds,
        None if offered else count, offered, percentile(latencies, 0.5),
        percentile(latencies, 0.99), max(latencies, default=None),
        held / batches if batches else None,
        (after["busy_seconds"] - before["busy_seconds"]) / seconds,
    )  # fmt: skip


def percentile(ordered: list[float], share: float) -> float | None:
    """Nearest-rank percentile of sorted values (None for none)."""
    return ordered[max(math.ceil(share * len(ordered)), 1) - 1] if ordered else None


def stop_server(server: subprocess.Popen) -> int:
    """SIGTERM, then its exit status (no exit within ``STOP_SECONDS``: a harness failure)."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
    try:
        return server.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
        raise SystemExit(f"attn-serve did not exit {STOP_SECONDS} s after SIGTERM") from None


def measure(args: argparse.Namespace, lines: list[str], scratch: Path) -> tuple[Row, list, int]:
    """The ceiling, then every round against a server per batching mode: rows and the
    servers' worst exit status."""
    ceiling, reference = batch_ceiling(args, lines, scratch)
    options = {} if args.beam is None else {"beam": args.beam}
    rounds, worst = [], 0
    for mode in args.batching:
        port, log = args.port or free_port(), scratch / f"serve-{mode}.log"
        server = start_server(args, mode, port, log)
        try:
            wait_until_listening(server, port, log)
            warm_up = Work(lines[:1], options, args.max_seconds)
            load_round(port, 1, warm_up, reference, mode)
            rounds += [
                load_round(port, count, Work(lines, options, args.max_seconds), reference, mode)
                for count in args.clients
            ]
            rounds += [
                load_round(port, SENDERS, Work.poisson(lines, options, args.max_seconds, rate),
                           reference, mode)
                for rate in args.rates
            ]  # fmt: skip
        finally:
            status = stop_server(server)
        worst = status if worst == 0 else worst
    return ceiling, rounds, worst


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def shown(value: float | None, spec: str = ".1f") -> str:
    """A table cell: ``-`` for nothing."""
    return "-" if value is None else format(value, spec)


def print_table(ceiling: Row, rounds: list[Row]) -> None:
    """The Markdown table."""
    print("| system | requests sent | answered | errors | differing answers | sentences/s | share "
          "of ceiling | p50 ms | p99 ms | max ms | mean sentences per step / search | worker "
          "busy |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in [ceiling, *rounds]:
        share = row.rate / ceiling.rate if row.rate is not None and ceiling.rate else None
        print(f"| {row.name} | {row.sent} | {row.answered} | {row.errors} "
              f"| {shown(row.differing, 'd')} | {shown(row.rate)} | {shown(share, '.2f')} "
              f"| {shown(row.p50_ms, '.0f')} | {shown(row.p99_ms, '.0f')} "
              f"| {shown(row.max_ms, '.0f')} | {shown(row.per_batch, '.2f')} "
              f"| {shown(row.busy, '.2f')} |")  # fmt: skip


def targets(ceiling: Row, rounds: list[Row]) -> dict[str, bool | None]:
    """The issue's targets at the largest client count, for the first batching mode measured
    (None: not measured, the ceiling's translation time being lost in its start-up time, or
    open-loop rounds only)."""
    closed = [row for row in rounds if row.clients]
    if not closed:
        load = {"closed-loop clients: none measured": None}
    else:
        top = max(closed, key=lambda row: row.clients)  # the first of the largest
        share = top.rate / ceiling.rate if ceiling.rate else None
        p99 = top.p99_ms if top.p99_ms is not None else math.inf
        load = {
            f"{top.clients} clients >= 0.5 x ceiling ({shown(share, '.2f')})": (
                None if share is None else share >= 0.5
            ),
            f"p99 < 1000 ms ({shown(top.p99_ms, '.0f')} ms)": p99 < 1000,
        }
    return {
        **load,
        "nothing dropped": all(row.errors == 0 and row.answered == row.sent for row in rounds),
        "all answers equal": all(row.differing == 0 for row in rounds),
    }


def main() -> None:
    """Measure, print the table and the verdict, write ``--json``."""
    args = parse_args()
    lines = read_lines(args.src)[: args.requests]
    if not lines:
        raise SystemExit(f"{args.src}: no lines")
    with tempfile.TemporaryDirectory() as scratch:
        ceiling, rounds, status = measure(args, lines, Path(scratch))
    threads = f"{args.threads} thread(s)" + (
        f" ({args.serve_threads} for attn-serve)" if args.serve_threads else ""
    )
    print(f"{len(lines)} lines of {args.src}, {threads}, one sentence a request, "
          f"at most {args.max_seconds:g} s a round; the clients share the cores with the "
          "server\n")  # fmt: skip
    print_table(ceiling, rounds)
    verdict = targets(ceiling, rounds)
    words = {True: "yes", False: "NO", None: "not measured (give more lines)"}
    missed, unknown = (sum(held is value for held in verdict.values()) for value in (False, None))
    summary = "all met" if all(verdict.values()) else f"{missed} missed, {unknown} not measured"
    print(f"\nTargets: {'; '.join(f'{name}: {words[held]}' for name, held in verdict.items())}"
          f" -> {summary}")  # fmt: skip
    print(f"attn-serve stopped by SIGTERM with exit status {status}")
    if args.json:
        results = {"src": str(args.src), "lines": len(lines), "threads": args.threads,
                   "serve_threads": args.serve_threads or args.threads,
                   "rows": [asdict(row) for row in [ceiling, *rounds]], "targets": verdict,
                   "server_exit_status": status}  # fmt: skip
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    if status != 0:
        raise SystemExit("attn-serve did not exit 0 after SIGTERM")


if __name__ == "__main__":
    main()
