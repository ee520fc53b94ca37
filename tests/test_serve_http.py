"""attn-serve as a user runs it: the command in its own process, real HTTP on a free port.
Translations equal attn-translate's, a client that leaves mid-request does not stop the
server, SIGTERM and Ctrl-C finish the requests in flight and exit 0, a non-loopback address
needs a key, a busy port is one clear error; and a CTranslate2 folder is served too."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from test_translate_cli import run_dir, source_lines, translate_cli  # noqa: F401 (fixture)
from typer.testing import CliRunner

pytestmark = pytest.mark.usefixtures("one_thread")
SERVE = Path(sys.executable).with_name("attn-serve")


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def as_in_a_terminal() -> None:
    """Default SIGINT and SIGTERM in the child (a background pytest ignores SIGINT)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def start_server(model: Path, *options: str) -> tuple[subprocess.Popen, int]:
    """``attn-serve model`` on a free port, once it answers /v1/health (signals as in a
    terminal, one thread)."""
    port = free_port()
    process = subprocess.Popen(
        [str(SERVE), str(model), "--port", str(port), *options],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1"},
        preexec_fn=as_in_a_terminal,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"attn-serve exited {process.returncode}: {process.communicate()}")
        try:
            if request(port, "GET", "/v1/health")[0] == 200:
                return process, port
        except OSError:
            time.sleep(0.2)
    process.kill()
    pytest.fail(f"attn-serve did not answer within 60 s: {process.communicate()}")


def request(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    """One HTTP request on a new connection: (status, JSON answer)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        payload = None if body is None else json.dumps(body)
        connection.request(method, path, payload, {"Content-Type": "application/json"})
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        connection.close()


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> tuple[int, str]:
    """Send ``sig`` and wait: (exit status, stderr)."""
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    return process.returncode, stderr


@pytest.fixture(scope="module")
def server(run_dir):  # noqa: F811
    """attn-serve on the toy run, requests gathered for up to 300 ms."""
    process, port = start_server(run_dir, "--batch-wait-ms", "300")
    yield port
    if process.poll() is None:
        assert stop(process)[0] == 0


def test_translations_over_http_equal_attn_translate(server, run_dir, corpus):  # noqa: F811
    sources = source_lines(corpus, 8)
    status, answer = request(server, "POST", "/v1/translate", {"text": sources, "beam": 2})
    assert status == 200
    expected = translate_cli(run_dir, "--beam", "2", stdin="\n".join(sources) + "\n")
    served = [result["translation"] for result in answer["translations"]]
    assert served == expected.stdout.split("\n")[:-1]


@pytest.mark.parametrize(("options", "streams"), [((), False), (("--streaming",), True)])
def test_whole_batches_by_default_and_streaming_when_asked(run_dir, corpus, options, streams):  # noqa: F811
    process, port = start_server(run_dir, *options)
    try:
        sources = source_lines(corpus, 3)
        status, answer = request(port, "POST", "/v1/translate", {"text": sources})
        assert status == 200 and len(answer["translations"]) == 3
        health = request(port, "GET", "/v1/health")[1]
        assert (health["steps"] > 0, health["searches"] > 0) == (streams, not streams)
    finally:
        assert stop(process)[0] == 0


def test_a_client_leaving_mid_request_does_not_stop_the_server(server, corpus):
    body = json.dumps({"text": source_lines(corpus, 16), "beam": 5}).encode()
    head = (
        f"POST /v1/translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    for sent in (head + body, head + body[: len(body) // 2]):  # whole request; half a body
        with socket.create_connection(("127.0.0.1", server)) as client:
            client.sendall(sent)
        time.sleep(0.1)
    status, answer = request(server, "POST", "/v1/translate", {"text": source_lines(corpus, 1)})
    assert status == 200 and len(answer["translations"]) == 1
    deadline = time.monotonic() + 30
    while request(server, "GET", "/v1/health")[1]["queued_sentences"]:
        assert time.monotonic() < deadline, "the departed clients' jobs never left the queue"
        time.sleep(0.1)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_finishes_requests_in_flight_and_exits_0(run_dir, corpus, sig):  # noqa: F811
    process, port = start_server(run_dir, "--batch-wait-ms", "1000")
    sources = source_lines(corpus, 4)
    answers: dict[int, tuple[int, dict]] = {}

    def send(index: int) -> None:
        answers[index] = request(port, "POST", "/v1/translate", {"text": [sources[index]]})

    clients = [threading.Thread(target=send, args=(index,)) for index in range(4)]
    for client in clients:
        client.start()
    deadline = time.monotonic() + 10
    while request(port, "GET", "/v1/health")[1]["queued_sentences"] < 4:
        assert time.monotonic() < deadline, "the requests never reached the queue"
        time.sleep(0.02)
    status, stderr = stop(process, sig)  # while the four wait for their batch
    for client in clients:
        client.join(timeout=60)
    assert status == 0, stderr
    assert sorted(answers) == [0, 1, 2, 3]
    assert all(code == 200 and answer["translations"] for code, answer in answers.values())
    assert "Traceback" not in stderr and "attn-serve: stopped" in stderr
    with pytest.raises(OSError):  # nothing listens any more
        request(port, "GET", "/v1/health")


def test_a_second_ctrl_c_stops_at_once(run_dir):  # noqa: F811
    process, port = start_server(run_dir, "--batch-wait-ms", "5000")
    outcome: list[object] = []

    def send() -> None:  # uvicorn answers a cancelled request with a plain-text 500
        try:
            outcome.append(request(port, "POST", "/v1/translate", {"text": ["ein Satz"]}))
        except (OSError, ValueError) as error:
            outcome.append(error)

    waiting = threading.Thread(target=send, daemon=True)
    waiting.start()
    deadline = time.monotonic() + 10
    while request(port, "GET", "/v1/health")[1]["queued_sentences"] < 1:
        assert time.monotonic() < deadline, "the request never reached the queue"
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    time.sleep(0.3)
    status, stderr = stop(process, signal.SIGINT)  # the request still waits for its batch
    assert status == 130 and "requests in flight were dropped" in stderr, stderr
    waiting.join(timeout=10)
    assert len(outcome) == 1 and isinstance(outcome[0], OSError | ValueError)  # not translated


def test_another_address_needs_an_api_key_and_a_busy_port_is_one_error(run_dir):  # noqa: F811
    from seq2seq_attn.cli import serve_app

    result = CliRunner().invoke(serve_app, [str(run_dir), "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "--api-key" in result.output
    empty = CliRunner().invoke(serve_app, [str(run_dir), "--host", "0.0.0.0", "--api-key", " "])
    assert empty.exit_code == 2 and "empty" in empty.output
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        completed = subprocess.run(
            [str(SERVE), str(run_dir), "--port", str(port)], capture_output=True, text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120,
        )  # fmt: skip
    assert completed.returncode == 1
    assert f"cannot serve on 127.0.0.1:{port}" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_an_api_key_from_the_environment_is_announced_and_required(run_dir, monkeypatch):  # noqa: F811
    monkeypatch.setenv("ATTN_SERVE_API_KEY", "k3y")
    process, port = start_server_keyed(run_dir)
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.request("GET", "/v1/model")
        assert connection.getresponse().status == 401
        connection.close()
    finally:
        status, stderr = stop(process)
    assert status == 0 and "API key is required" in stderr


def start_server_keyed(model: Path) -> tuple[subprocess.Popen, int]:
    """attn-serve with the key from the environment, ready once /v1/health answers 401."""
    port = free_port()
    process = subprocess.Popen(
        [str(SERVE), str(model), "--port", str(port)], stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            request(port, "GET", "/v1/health")
        except OSError:
            time.sleep(0.2)
            continue
        except json.JSONDecodeError:
            pass
        return process, port
    process.kill()
    pytest.fail("attn-serve with a key did not start")


def test_a_ctranslate2_folder_is_served_without_attention(run_dir, corpus, tmp_path):  # noqa: F811
    pytest.importorskip("ctranslate2")
    from fastapi.testclient import TestClient

    from seq2seq_attn.cli import export_app
    from seq2seq_attn.serve import ServeLimits, ServeSettings, create_app, describe_model
    from seq2seq_attn.serve.batcher import DynamicBatcher
    from seq2seq_attn.translation import TranslationSettings, open_translator

    exported = tmp_path / "exported"
    assert CliRunner().invoke(export_app, [str(run_dir), "-o", str(exported)]).exit_code == 0
    translator = open_translator(exported, TranslationSettings(device="cpu"))
    limits = ServeLimits()
    info = describe_model(translator, exported, 1, limits)
    app = create_app(DynamicBatcher(translator), ServeSettings(limits, None, info))
    sources = source_lines(corpus, 6)
    with TestClient(app) as client:
        assert client.get("/v1/model").json()["backend"] == "ctranslate2"
        served = client.post("/v1/translate", json={"text": sources}).json()["translations"]
        for wanted in ("attention", "alignments"):
            refused = client.post("/v1/translate", json={"text": ["a"], wanted: True})
            assert refused.status_code == 422 and refused.json()["field"] == wanted
        refused = client.post("/v1/translate", json={"text": ["a"], "constraints": [["x"]]})
        assert refused.status_code == 422 and refused.json()["field"] == "constraints"
    expected = translate_cli(exported, stdin="\n".join(sources) + "\n").stdout.split("\n")[:-1]
    assert [result["translation"] for result in served] == expected


def test_the_model_is_opened_in_a_thread_that_ends_before_serving(run_dir, monkeypatch, tmp_path):  # noqa: F811
    """The main thread (uvicorn's) runs no parallel torch operation: attn-serve opens the model
    in a short-lived thread, which has ended when serving starts, so that only the model worker
    keeps an OpenMP team (see ``open_off_the_main_thread``); an exit while opening (an
    unreadable model) is raised as before."""
    from seq2seq_attn import serve as serve_module
    from seq2seq_attn.cli import serve_app, serve_cmd

    openers, original = [], serve_cmd.open_model

    def recording(*arguments):
        openers.append(threading.current_thread())
        return original(*arguments)

    def serving(*arguments, **keywords):  # instead of uvicorn: is the opener gone by now?
        assert openers and not openers[0].is_alive()
        return "stopped"

    monkeypatch.setattr(serve_cmd, "open_model", recording)
    monkeypatch.setattr(serve_module, "serve", serving)
    result = CliRunner().invoke(serve_app, [str(run_dir), "--port", str(free_port())])
    assert result.exit_code == 0, result.output
    assert len(openers) == 1 and openers[0] is not threading.main_thread()
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(b"not a checkpoint")
    unreadable = CliRunner().invoke(serve_app, [str(damaged)])
    assert unreadable.exit_code == 1 and "damaged.pt" in unreadable.output
