"""scripts/bench_serve.py: end to end on a toy model (every request answered, answers equal to
attn-translate's, the server stopped with exit status 0), and its counting against a stub
server that fails one request and answers another wrongly."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from test_translate_cli import run_dir  # noqa: F401 (fixture)

pytest.importorskip("fastapi")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "bench_serve.py"


def load_script():
    """scripts/bench_serve.py as a module (scripts are not a package)."""
    spec = importlib.util.spec_from_file_location("bench_serve", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_serve"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def table_rows(stdout: str) -> dict[str, list[str]]:
    """The Markdown table's rows by their first cell."""
    return {
        line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]]
        for line in stdout.splitlines()
        if line.startswith("| ")
    }


def test_every_request_is_answered_as_attn_translate_answers(run_dir, corpus, tmp_path):  # noqa: F811
    results = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, SCRIPT, run_dir, "--src", corpus / "dev.src", "--requests", "20",
         "--clients", "1", "4", "--threads", "1", "--max-seconds", "120", "--json", results,
         "--batching", "stream", "whole", "--rates", "50"],
        capture_output=True, text=True, timeout=600,
        env=os.environ | {"OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = table_rows(done.stdout)
    names = ["attn-translate (batch ceiling)"] + [
        f"attn-serve ({mode}), {load}"
        for mode in ("streaming", "whole batches")
        for load in ("1 clients", "4 clients", "open loop, 50 requests/s")
    ]
    assert list(rows)[2:] == names  # after the header and its rule
    for name in names[1:]:
        sent, answered, errors, differing = rows[name][:4]
        assert (sent, answered, errors, differing) == ("20", "20", "0", "0")
    assert "nothing dropped: yes; all answers equal: yes" in done.stdout
    assert "attn-serve stopped by SIGTERM with exit status 0" in done.stdout
    written = json.loads(results.read_text())
    assert written["server_exit_status"] == 0
    assert [row["name"] for row in written["rows"]] == names
    # one client: one sentence a search step, and one a search
    assert [row["per_batch"] for row in written["rows"]][1::3] == [1.0, 1.0]
    assert [row["offered"] for row in written["rows"]][3::3] == [50.0, 50.0]
    # the worker's busy share of each round: some work, never more than the round's time
    assert all(0 < row["busy"] <= 1.0 for row in written["rows"][1:])


class StubHandler(BaseHTTPRequestHandler):
    """attn-serve's health and translate routes, keep-alive: translates by upper-casing, fails
    on the text "boom" (500) and tells /v1/health how many sentences it has seen."""

    protocol_version = "HTTP/1.1"
    seen = 0

    def answer(self, status: int, body: dict) -> None:
        """Send ``body`` as JSON."""
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        """/v1/health: one search, two steps and a millisecond of work a sentence."""
        count = StubHandler.seen
        self.answer(200, {"status": "ok", "queued_sentences": 0, "searches": count,
                          "sentences": count, "steps": 2 * count,
                          "step_sentences": 2 * count, "busy_seconds": count / 1000})  # fmt: skip

    def do_POST(self) -> None:
        """/v1/translate."""
        (text,) = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["text"]
        StubHandler.seen += 1
        if text == "boom":
            self.answer(500, {"error": "translation failed", "field": None})
        else:
            self.answer(200, {"translations": [{"translation": text.upper()}]})

    def log_message(self, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def stub_port() -> Iterator[int]:
    """A stub server on 127.0.0.1, in a thread."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_a_round_counts_errors_and_differing_answers(stub_port):
    bench = load_script()
    lines = [f"line {index}" for index in range(30)]
    lines[7] = "boom"
    reference = [line.upper() for line in lines]
    reference[12] = "SOMETHING ELSE"
    row = bench.load_round(stub_port, 4, bench.Work(lines, {}, 30.0), reference, "whole")
    assert (row.sent, row.answered, row.errors, row.differing) == (30, 29, 1, 1)
    assert row.per_batch == 1.0 and row.clients == 4 and "whole batches" in row.name
    assert row.busy == pytest.approx(30 / 1000 * row.rate / row.answered)  # 30 ms in the round
    verdict = bench.targets(bench.Row("ceiling", 30, 30, 0, None, row.rate), [row])
    assert verdict["nothing dropped"] is False and verdict["all answers equal"] is False


def test_a_round_stops_at_its_deadline(stub_port):
    bench = load_script()
    row = bench.load_round(stub_port, 2, bench.Work(["a"] * 50, {}, 0.0), ["A"] * 50, "stream")
    assert row.sent == row.answered == 0 and row.p99_ms is None


def test_an_open_loop_round_sends_at_its_poisson_times(stub_port):
    bench = load_script()
    lines = [f"line {index}" for index in range(40)]
    work = bench.Work.poisson(lines, {}, 30.0, 100.0)
    assert work.offsets == bench.Work.poisson(lines, {}, 30.0, 100.0).offsets  # seeded
    assert work.offsets == sorted(work.offsets) and 0.1 < work.offsets[-1] < 1.0  # ~0.4 s
    sent_at = []
    original_due = bench.Work.due

    def recording_due(self, index):
        due = original_due(self, index)
        sent_at.append((time.perf_counter() - due, index))
        return due

    bench.Work.due = recording_due
    row = bench.load_round(stub_port, 8, work, [line.upper() for line in lines], "stream")
    assert (row.sent, row.answered, row.errors, row.differing) == (40, 40, 0, 0)
    assert row.clients is None and row.offered == 100.0
    assert row.name == "attn-serve (streaming), open loop, 100 requests/s"
    assert all(late >= 0 for late, _ in sent_at)  # never before its time
    verdict = bench.targets(bench.Row("ceiling", 40, 40, 0, None, row.rate), [row])
    assert verdict["closed-loop clients: none measured"] is None
    short = bench.Work.poisson(lines, {}, 0.1, 100.0)  # only the requests due in 0.1 s are sent
    row = bench.load_round(stub_port, 8, short, [line.upper() for line in lines], "stream")
    assert 0 < row.sent <= sum(offset < 0.1 for offset in short.offsets) < len(lines)


def test_percentiles_are_nearest_rank():
    bench = load_script()
    values = sorted(np.random.default_rng(0).exponential(size=101).tolist())
    for share in (0.01, 0.5, 0.99, 1.0):
        expected = np.percentile(values, share * 100, method="inverted_cdf")
        assert bench.percentile(values, share) == pytest.approx(expected)
    assert bench.percentile([], 0.5) is None
