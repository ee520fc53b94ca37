"""attn-serve through FastAPI's test client on a briefly trained toy model: translations equal
attn-translate's lines for the same options, every limit and bad input gives its 4xx naming
the field, the API key, a model error is a 500 after which the server goes on, and the
dynamic batcher puts concurrent requests into one search."""

from __future__ import annotations

import dataclasses
import json
import threading
import time

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient
from test_translate_cli import run_dir, source_lines, translate_cli  # noqa: F401 (fixture)

from seq2seq_attn.device import Precision
from seq2seq_attn.serve import ServeLimits, ServeSettings, create_app, describe_model
from seq2seq_attn.serve import batcher as batcher_module
from seq2seq_attn.serve.batcher import DynamicBatcher
from seq2seq_attn.serve.schema import TranslateRequest, request_options
from seq2seq_attn.translation import TranslationSettings, open_translator
from seq2seq_attn.translation.common import encode_sources
from seq2seq_attn.translation.torch_backend import TorchStream

pytestmark = pytest.mark.usefixtures("one_thread")

LIMITS = ServeLimits(max_sentences=16, max_chars=400, max_body_bytes=8000)


@pytest.fixture(scope="module")
def translator(run_dir):  # noqa: F811
    """The toy model opened as attn-translate opens it (fp32, CPU)."""
    return open_translator(run_dir, TranslationSettings(device="cpu"))


def make_client(
    translator, api_key: str | None = None, wait: float = 0.0, streaming: bool = False
) -> TestClient:
    """A test client of an app around ``translator`` (enter it to start the worker)."""
    info = describe_model(translator, translator_path(translator), 1, LIMITS)
    batcher = DynamicBatcher(translator, wait_seconds=wait, streaming=streaming)
    return TestClient(create_app(batcher, ServeSettings(LIMITS, api_key, info)))


def translator_path(translator) -> str:
    """A name for /v1/model."""
    return "toy"


@pytest.fixture(scope="module", params=[False, True], ids=["whole", "streaming"])
def client(translator, request):
    """A running app without an API key, in each batching mode."""
    with make_client(translator, streaming=request.param) as running:
        yield running


def post(client: TestClient, body: dict, **headers: str):
    """POST /v1/translate with ``body`` as ASCII JSON (lone surrogates travel as escapes)."""
    headers = {"content-type": "application/json", **headers}
    return client.post("/v1/translate", content=json.dumps(body).encode(), headers=headers)


def cli_lines(run_dir, sources: list[str], *options: str, tmp_path=None) -> list[str]:  # noqa: F811
    """attn-translate's output lines for ``sources``."""
    result = translate_cli(run_dir, *options, stdin="".join(line + "\n" for line in sources))
    assert result.exit_code == 0, result.output
    return result.stdout.split("\n")[:-1]


def n_best_lines(translations: list[dict]) -> list[str]:
    """The server's n-best lists in attn-translate's ``index ||| text ||| score`` format."""
    return [
        f"{index} ||| {entry['translation']} ||| {entry['score']:.4f}"
        for index, result in enumerate(translations)
        for entry in result["n_best"]
    ]


@pytest.mark.parametrize(
    ("body", "options"),
    [
        ({}, []),
        ({"beam": 1}, ["--beam", "1"]),
        ({"beam": 4, "length_penalty": 1.0, "max_length_ratio": 1.2},
         ["--beam", "4", "--length-penalty", "1.0", "--max-length-ratio", "1.2"]),
    ],
)  # fmt: skip
def test_translations_equal_attn_translate(client, run_dir, corpus, body, options):  # noqa: F811
    sources = [*source_lines(corpus, 10), ""]
    answer = post(client, {"text": sources, **body})
    assert answer.status_code == 200, answer.text
    served = [result["translation"] for result in answer.json()["translations"]]
    assert served == cli_lines(run_dir, sources, *options)
    assert served[-1] == ""


def test_n_best_lists_and_sampling_equal_attn_translate(client, run_dir, corpus):  # noqa: F811
    sources = source_lines(corpus, 6)
    answer = post(client, {"text": sources, "beam": 3, "n_best": 3}).json()["translations"]
    assert all(len(result["n_best"]) == 3 for result in answer)
    assert n_best_lines(answer) == cli_lines(run_dir, sources, "--beam", "3", "--n-best", "3")
    sampling = {"sample": True, "n_best": 2, "temperature": 0.7, "top_k": 5, "seed": 11}
    sampled = post(client, {"text": sources, **sampling}).json()["translations"]
    options = ["--sample", "--n-best", "2", "--temperature", "0.7", "--top-k", "5", "--seed", "11"]
    assert n_best_lines(sampled) == cli_lines(run_dir, sources, *options)


def test_prefixes_and_constraints_equal_attn_translate(client, run_dir, corpus, tmp_path):  # noqa: F811
    sources = source_lines(corpus, 5)
    targets = (corpus / "dev.tgt").read_text(encoding="utf-8").splitlines()[:5]
    prefixes = [target.split()[0] for target in targets[:4]] + [""]
    constraints = [[target.split()[-1]] for target in targets[:3]] + [[], []]
    (tmp_path / "prefix.txt").write_text("\n".join(prefixes) + "\n", encoding="utf-8")
    (tmp_path / "c.jsonl").write_text("\n".join(map(json.dumps, constraints)) + "\n", "utf-8")
    served = post(client, {"text": sources, "prefix": prefixes}).json()["translations"]
    expected = cli_lines(run_dir, sources, "--prefix", tmp_path / "prefix.txt")
    assert [result["translation"] for result in served] == expected
    assert all(r["translation"].startswith(p) for r, p in zip(served, prefixes, strict=True))
    served = post(client, {"text": sources, "constraints": constraints}).json()["translations"]
    expected = cli_lines(run_dir, sources, "--constraints", tmp_path / "c.jsonl")
    assert [result["translation"] for result in served] == expected
    assert [result["unmet_constraints"] for result in served] == [0] * 5


def test_attention_and_alignments_belong_to_the_best_translation(client, translator, corpus):
    sources = [*source_lines(corpus, 2), " "]
    body = {"text": sources, "attention": True, "alignments": True}
    served = post(client, body).json()["translations"]
    best = translator.translate(sources[:2])
    assert [r["alignment"] for r in served[:2]] == translator.alignments(sources[:2], best)
    for result, hypothesis, source in zip(served, best, sources, strict=False):
        attention = result["attention"]
        assert attention == json.loads(json.dumps(translator.attention_views(source, hypothesis)))
        assert len(attention["cross"][0][0]) == len(hypothesis.tokens) + 1
    assert served[2]["attention"] is None and served[2]["translation"] == ""


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"text": []}, 422, "text"),
        ({"text": ["a"] * 17}, 422, "text"),
        ({"text": ["ok", "a" * 401]}, 422, "text[1]"),
        ({"text": ["two\nlines"]}, 422, "text[0]"),
        ({"text": ["a", 3]}, 422, "text[1]"),
        ({"text": "a sentence"}, 422, "text"),
        ({"sentences": ["a"]}, 422, "text"),
        ({"text": ["a"], "beem": 2}, 422, "beem"),
        ({"text": ["a"], "beam": 0}, 422, "beam"),
        ({"text": ["a"], "beam": 65}, 422, "beam"),
        ({"text": ["a"], "beam": "2"}, 422, "beam"),
        ({"text": ["a"], "beam": 2, "n_best": 3}, 422, "n_best"),
        ({"text": ["a"], "length_penalty": -1}, 422, "length_penalty"),
        ({"text": ["a"], "max_length_ratio": 0}, 422, "max_length_ratio"),
        ({"text": ["a"], "top_p": 1.5}, 422, "top_p"),
        ({"text": ["a"], "temperature": 0}, 422, "temperature"),
        ({"text": ["a"], "top_k": -1}, 422, "top_k"),
        ({"text": ["a"], "sample": True, "beam": 3}, 422, "beam"),
        ({"text": ["a"], "sample": True, "constraints": [["x"]]}, 422, "constraints"),
        ({"text": ["a", "b"], "prefix": ["x"]}, 422, "prefix"),
        ({"text": ["a"], "constraints": [[1]]}, 422, "constraints[0][0]"),
        ({"text": ["a"], "attention": "yes"}, 422, "attention"),
        ({"text": ["a"] * 9, "attention": True}, 422, "attention"),
        ({"text": ["ok", "\ud800"]}, 422, "text[1]"),
        ({"text": ["a"], "constraints": [["x"] * 63]}, 422, "constraints[0]"),
        ({"text": ["a"], "sample": True, "temperature": 0.001}, 422, "temperature"),
    ],
)
def test_bad_requests_name_their_field(client, body, status, field):
    answer = post(client, body)
    assert answer.status_code == status, answer.text
    error = answer.json()
    assert error["field"] == field and field in error["error"]


def test_bodies_that_are_not_json_too_large_or_elsewhere(client):
    for content in (b'{"text": ', b"\xff\xfe", b"[1, 2]", b""):
        answer = client.post("/v1/translate", content=content)
        assert 400 <= answer.status_code < 500 and "error" in answer.json(), content
    too_large = json.dumps({"text": ["a" * 100] * 8}).encode() + b" " * 8000
    answer = client.post("/v1/translate", content=too_large)
    assert answer.status_code == 413 and "8000 bytes" in answer.json()["error"]
    assert client.get("/v1/nothing").status_code == 404
    assert client.get("/v1/translate").status_code == 405
    # curl -d labels JSON as a form, others label it text or not at all: read as JSON
    for label in ("application/x-www-form-urlencoded", "text/plain", ""):
        labelled = client.post(
            "/v1/translate", content=b'{"text": ["a"]}', headers={"content-type": label}
        )
        assert labelled.status_code == 200, label
    for number in (b"NaN", b"Infinity"):
        answer = client.post("/v1/translate", content=b'{"text": ["a"], "top_p": ' + number + b"}")
        assert answer.status_code == 422 and answer.json()["field"] == "top_p"
        assert "finite" in answer.json()["error"]
    assert post(client, {"text": ["a"], "sample": True, "seed": -1}).status_code == 200


def test_health_model_and_documentation(client):
    health = client.get("/v1/health").json()
    assert health["status"] == "ok" and health["queued_sentences"] == 0
    assert health["busy_seconds"] >= 0
    model = client.get("/v1/model").json()
    assert model["family"] == "transformer" and model["backend"] == "torch"
    assert model["capabilities"] == {"attention": True, "constraints": True, "self_attention": True}
    assert model["limits"]["max_sentences"] == 16 and model["decode"]["beam_size"] == 3
    schema = client.get("/openapi.json").json()
    assert "/v1/translate" in schema["paths"] and "TranslateRequest" in json.dumps(schema)
    docs = client.get("/docs").text
    assert "docs-static/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()
    assert schema["openapi"].startswith("3.0")  # what the vendored Swagger UI 4 renders
    assert client.get("/docs-static/swagger-ui-bundle.js").status_code == 200


def test_api_key_is_checked_on_every_api_request(translator):
    with make_client(translator, api_key="s3cret") as keyed:
        for path in ("/v1/health", "/v1/model"):
            assert keyed.get(path).status_code == 401
            assert keyed.get(path, headers={"X-API-Key": "wrong"}).status_code == 401
            assert keyed.get(path, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert post(keyed, {"text": ["a"]}).status_code == 401
        assert post(keyed, {"text": ["a"]}, authorization="Bearer s3cret").status_code == 200
        assert keyed.get("/").status_code == 200  # the page holds no data; it asks for the key


@pytest.mark.parametrize("streaming", [True, False])
def test_a_model_error_is_a_500_and_the_server_goes_on(translator, monkeypatch, streaming):
    original, original_add, original_step = (
        type(translator).n_best,
        TorchStream.add,
        TorchStream.step,
    )

    def failing(self, src_texts, *arguments, **options):
        if "boom" in src_texts:
            raise RuntimeError("out of memory in the search")
        return original(self, src_texts, *arguments, **options)

    def failing_step(self):  # a search holding "boom" fails at its next step
        if "boom" in self.texts:
            raise RuntimeError("out of memory in the search")
        return original_step(self)

    def recording_add(self, src_texts, force=False):
        self.texts = [*getattr(self, "texts", []), *src_texts]
        return original_add(self, src_texts, force)

    monkeypatch.setattr(TorchStream, "step", failing_step)
    monkeypatch.setattr(TorchStream, "add", recording_add)

    monkeypatch.setattr(type(translator), "n_best", failing)
    with make_client(translator, streaming=streaming) as running:
        answer = post(running, {"text": ["boom"]})
        assert answer.status_code == 500 and "out of memory" in answer.json()["error"]
        assert post(running, {"text": ["still here"]}).status_code == 200
    # a failing request batched with others fails alone (a running search that fails is
    # searched again one job at a time)
    batcher = DynamicBatcher(translator, wait_seconds=0.5, streaming=streaming)
    batcher.start()
    options = job_options(translator, ["x"])
    futures = [batcher.submit([text], options) for text in ("fine", "boom", "also fine")]
    with pytest.raises(RuntimeError, match="out of memory"):
        futures[1].result(timeout=60)
    assert [futures[i].result(timeout=60)[0]["translation"] for i in (0, 2)] == (
        translator.detokenize(translator.translate(["fine", "also fine"]))
    )
    batcher.close()


def test_concurrent_requests_share_one_search(translator, corpus):
    sources = source_lines(corpus, 8)
    options = job_options(translator, sources[:1])
    batcher = DynamicBatcher(translator, wait_seconds=0.5, streaming=False)
    batcher.start()
    futures: dict[int, object] = {}

    def submit(index: int) -> None:
        futures[index] = batcher.submit([sources[index]], options)

    threads = [threading.Thread(target=submit, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results = [futures[index].result(timeout=60) for index in range(8)]
    batcher.close()
    assert batcher.stats.searches == 1 and batcher.stats.largest_search == 8
    alone = translator.detokenize(translator.translate(sources))
    assert [result[0]["translation"] for result in results] == alone


def recorded_searches(translator, monkeypatch) -> tuple[list[list[str]], threading.Event]:
    """Record the sentences of each whole-batch search; the first search waits until the
    returned event is set."""
    searches: list[list[str]] = []
    release = threading.Event()
    original = type(translator).n_best

    def recording(self, src_texts, *arguments, **options):
        searches.append(list(src_texts))
        if len(searches) == 1:
            release.wait(timeout=60)
        return original(self, src_texts, *arguments, **options)

    monkeypatch.setattr(type(translator), "n_best", recording)
    return searches, release


def test_requests_answered_together_come_back_to_one_batch(translator, corpus, monkeypatch):
    """Closed-loop clients: a request queued during a search and the requests that its
    answers bring back share the next batch (the gathering window opens when the worker
    turns to the queue, not when the queued request arrived long before)."""
    sources = source_lines(corpus, 3)
    options = job_options(translator, sources[:1])
    searches, release = recorded_searches(translator, monkeypatch)
    batcher = DynamicBatcher(translator, wait_seconds=0.5, streaming=False)
    batcher.start()
    first = batcher.submit(sources[:1], options)
    while not searches:
        time.sleep(0.01)
    queued = batcher.submit(sources[1:2], options)
    time.sleep(0.8)  # longer than wait_seconds: a window opened at its arrival has closed
    release.set()
    first.result(timeout=60)
    returning = batcher.submit(sources[2:], options)  # the answered client's next request
    results = queued.result(timeout=60) + returning.result(timeout=60)
    batcher.close()
    assert searches == [sources[:1], sources[1:]]
    assert [result["translation"] for result in results] == (
        translator.detokenize(translator.translate(sources[1:]))
    )


def test_gathering_goes_on_while_requests_keep_arriving(translator, corpus, monkeypatch):
    """An idle worker gathers until ``wait_seconds`` pass without a new request: requests
    spaced closer than that share one batch even when they span more than ``wait_seconds``."""
    sources = source_lines(corpus, 4)
    options = job_options(translator, sources[:1])
    searches, release = recorded_searches(translator, monkeypatch)
    release.set()
    batcher = DynamicBatcher(translator, wait_seconds=0.4, streaming=False)
    batcher.start()
    futures = []
    for source in sources:  # 0.6 s from the first to the last
        futures.append(batcher.submit([source], options))
        time.sleep(0.2)
    for future in futures:
        future.result(timeout=60)
    batcher.close()
    assert searches == [sources]


def test_gathering_stops_at_its_bound_under_steady_traffic(translator, corpus, monkeypatch):
    """Requests that never pause do not hold the batch back for ever: the gathering ends
    GATHER_WAITS x wait_seconds after it opened, and the rest wait for the next search."""
    sources = source_lines(corpus, 12)
    options = job_options(translator, sources[:1])
    searches, release = recorded_searches(translator, monkeypatch)
    release.set()
    monkeypatch.setattr(batcher_module, "GATHER_WAITS", 3)  # a bound of 0.6 s
    batcher = DynamicBatcher(translator, wait_seconds=0.2, streaming=False)
    batcher.start()
    futures = []
    for source in sources:  # one every 0.1 s: 1.1 s from the first to the last
        futures.append(batcher.submit([source], options))
        time.sleep(0.1)
    for future in futures:
        future.result(timeout=60)
    batcher.close()
    assert 1 < len(searches[0]) < len(sources)
    assert [sentence for search in searches for sentence in search] == sources


@pytest.mark.parametrize("streaming", [False, True])
def test_busy_seconds_count_work_not_waiting(translator, corpus, monkeypatch, streaming):
    """The worker's busy seconds hold the searches (here slowed to 0.3 s each), already when
    the answer comes, and not the time it waited for requests."""
    sources = source_lines(corpus, 2)
    options = job_options(translator, sources[:1])
    original_n_best, original_step = type(translator).n_best, TorchStream.step

    def slow_n_best(self, *arguments, **keywords):
        time.sleep(0.3)
        return original_n_best(self, *arguments, **keywords)

    def slow_step(self):
        if not getattr(self, "slowed", False):  # the first step of each running search
            self.slowed = True
            time.sleep(0.3)
        return original_step(self)

    monkeypatch.setattr(type(translator), "n_best", slow_n_best)
    monkeypatch.setattr(TorchStream, "step", slow_step)
    batcher = DynamicBatcher(translator, wait_seconds=0.01, streaming=streaming)
    batcher.start()
    started = time.perf_counter()
    time.sleep(0.5)  # idle: not busy
    for searched, source in enumerate(sources, start=1):
        batcher.submit([source], options).result(timeout=60)
        assert batcher.stats.busy_seconds >= 0.3 * searched
    batcher.close()
    elapsed = time.perf_counter() - started  # every busy stretch lies within it, after the idle
    assert batcher.stats.busy_seconds <= elapsed - 0.5
    assert (batcher.stats.steps > 0) == streaming  # the streaming case did stream


def job_options(translator, sources: list[str], **body):
    """The job options of a request for ``sources`` with ``body``'s options."""
    request = TranslateRequest(text=sources, **body)
    return request_options(request, translator.decode, translator.capabilities)


@pytest.mark.parametrize("streaming", [True, False])
def test_jobs_with_different_settings_do_not_share_a_search(translator, corpus, streaming):
    sources = source_lines(corpus, 2)
    batcher = DynamicBatcher(translator, wait_seconds=0.5, streaming=streaming)
    batcher.start()
    futures = [
        batcher.submit(sources, job_options(translator, sources, beam=beam)) for beam in (1, 2, 1)
    ]
    results = [future.result(timeout=60) for future in futures]
    batcher.close()
    assert batcher.stats.jobs == 3 and len(batcher._running) == 0
    if streaming:  # one running search per setting, each step holding its jobs' sentences
        assert batcher.stats.searches == 0 and batcher.stats.steps > 0
    else:
        assert batcher.stats.searches == 2
    for beam, result in zip((1, 2, 1), results, strict=True):
        searched = dataclasses.replace(translator, decode=job_options(
            translator, sources, beam=beam).decode)  # fmt: skip
        expected = searched.detokenize(searched.translate(sources))
        assert [entry["translation"] for entry in result] == expected


def test_a_request_joins_a_running_search(translator, corpus, monkeypatch):
    """A request that arrives while another's search runs joins it between two steps: no
    whole-batch search, a step that held both requests' sentences, and each gets the
    translations it gets alone."""
    sources = source_lines(corpus, 8)
    options = job_options(translator, sources[:1])
    stepped, arrived = threading.Event(), threading.Event()
    original_step, original_add = TorchStream.step, TorchStream.add
    steps_at_add = []

    def held_step(self):  # the first step waits until the second request is queued
        found = original_step(self)
        stepped.set()
        arrived.wait(timeout=60)
        return found

    def recording_add(self, src_texts, force=False):
        steps_at_add.append(self.search.beams is not None)  # joining a search under way
        return original_add(self, src_texts, force)

    monkeypatch.setattr(TorchStream, "step", held_step)
    monkeypatch.setattr(TorchStream, "add", recording_add)
    batcher = DynamicBatcher(translator, wait_seconds=0.0, streaming=True)
    batcher.start()
    first = batcher.submit(sources[:4], options)
    assert stepped.wait(timeout=60)
    second = batcher.submit(sources[4:], options)
    arrived.set()
    results = first.result(timeout=60) + second.result(timeout=60)
    batcher.close()
    stats = batcher.stats
    assert steps_at_add == [False, True]
    assert stats.searches == 0 and stats.sentences == 8 and stats.largest_step > 4
    assert [result["translation"] for result in results] == (
        translator.detokenize(translator.translate(sources))
    )


def test_a_full_running_search_makes_requests_wait_for_room(translator, corpus, monkeypatch):
    """--batch-tokens bounds a running search as it bounds a batch (sentences times the
    longest source): a request that does not fit waits for sentences to finish, then joins;
    nothing is lost, and an empty job is answered at once."""
    sources = source_lines(corpus, 8)
    encoded = encode_sources(translator.tokenizer, sources, translator.model.max_positions)
    limit = 2 * max(len(ids) + 1 for ids in encoded)  # room for two at least, not for eight
    refused, slots, original_add = [], [], TorchStream.add

    def checked_add(self, src_texts, force=False):  # (an error here only moves the job)
        keys = original_add(self, src_texts, force)
        refused.append(keys is None)
        live = list(self.lengths.values())
        slots.append(len(live) * max(live) if len(live) > 1 else 0)
        return keys

    monkeypatch.setattr(TorchStream, "add", checked_add)
    batcher = DynamicBatcher(
        dataclasses.replace(translator, max_tokens=limit), 0.05, streaming=True
    )
    batcher.start()
    options = job_options(translator, sources[:1])
    assert batcher.submit([], options).result(timeout=60) == []
    futures = [batcher.submit([source], options) for source in sources]
    results = [future.result(timeout=60)[0]["translation"] for future in futures]
    batcher.close()
    assert any(refused) and max(slots) <= limit and 1 < batcher.stats.largest_step < 8
    assert results == translator.detokenize(translator.translate(sources))
    assert batcher.stats.sentences == 8 and batcher.queued_sentences == 0


def test_a_bf16_running_search_casts_its_weights_once(translator, corpus, monkeypatch):
    """Under bf16 autocast, a running search keeps the cast weights from step to step (the
    autocast cache is cleared when it ends, not after every step)."""
    sources = source_lines(corpus, 3)
    bf16 = dataclasses.replace(translator, precision=Precision("bf16", "cpu"))
    cleared, original_clear = [], torch.clear_autocast_cache
    monkeypatch.setattr(
        torch, "clear_autocast_cache", lambda: cleared.append(1) or original_clear()
    )
    stream = bf16.stream(bf16.decode)
    keys = stream.add(sources)
    found, steps = {}, 0
    while len(found) < len(keys):
        found.update(stream.step())
        steps += 1
    assert steps > 1 and cleared == []
    stream.close()
    assert cleared == [1] and not torch.is_autocast_enabled("cpu")
    assert all(found[key][0].tokens for key in keys)
