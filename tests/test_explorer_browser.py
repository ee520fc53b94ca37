"""The attention explorer page (attn-serve's ``/``) in a real headless Chromium, against
``attn-serve`` serving a tiny Transformer: the page's translation and n-best list equal the API's
own answer, and hovering or focusing token chips highlights exactly the tokens the highlight rule
picks from the API's attention maps (recomputed here), for the default and a chosen layer/head.

Needs Playwright (the ``serve-test`` extra) and Chromium at /usr/bin/chromium (``make
install-browser``); the module skips, saying so, without them. ``EXPLORER_SCREENSHOT=path``
also saves the desktop screenshot there; ``EXPLORER_MODEL=RUN_DIR`` and
``EXPLORER_SENTENCE=text`` run the same tests on another model and sentence. The README's
picture (docs/explorer.png) was taken with::

    EXPLORER_MODEL=runs/m30k-transformer EXPLORER_SCREENSHOT=docs/explorer.png \
    EXPLORER_SENTENCE="Zwei Hunde spielen im Schnee vor einem roten Haus." \
    .venv/bin/pytest tests/test_explorer_browser.py
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest
from test_translate_cli import train_toy

pytestmark = pytest.mark.usefixtures("one_thread")

CHROMIUM = Path("/usr/bin/chromium")
# Without the networking flags Chromium hangs on an offline machine.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]  # fmt: skip
DESKTOP = {"width": 1200, "height": 900}
PHONE = {"width": 390, "height": 844}
# the page answered: a translation, or an error in the status line
DONE = """document.querySelector('#translation').textContent.length > 0
    || document.querySelector('#status').classList.contains('error')"""
CHIP_STATES = """chips => chips.map(chip => [Number(chip.dataset.index),
    chip.classList.contains("highlighted"), chip.dataset.weight ?? null])"""


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium (the system's, never a downloaded one), or a skip saying how to get
    it."""
    sync_api = pytest.importorskip(
        "playwright.sync_api",
        reason="Playwright is missing: `make install` (the serve-test extra) installs it, "
        "then `make install-browser` installs Chromium",
    )
    if not CHROMIUM.exists():
        pytest.skip(f"Chromium is missing at {CHROMIUM}: run `make install-browser`")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def run_dir(corpus, tmp_path_factory) -> Path:
    """A tiny Transformer (2 encoder and 2 decoder layers, 2 heads) trained for 100 steps: enough
    for non-empty translations. ``EXPLORER_MODEL`` names another run directory instead."""
    if os.environ.get("EXPLORER_MODEL"):
        return Path(os.environ["EXPLORER_MODEL"])
    directory = tmp_path_factory.mktemp("runs") / "toy"
    return train_toy(corpus, directory, layers=2, heads=2, steps=100, max_positions=64)


def free_port() -> int:
    """A TCP port nobody listens on (the OS picks it for a socket bound to port 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def call_api(base: str, path: str, body: dict | None = None, key: str | None = None) -> dict:
    """GET (no ``body``) or POST JSON to the server; the decoded answer."""
    headers = {"Content-Type": "application/json"} | ({"X-API-Key": key} if key else {})
    data = None if body is None else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(base + path, data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def wait_for_health(base: str, process: subprocess.Popen, log: Path, key: str | None) -> None:
    """Return once /v1/health answers 200; fail with the server's output when it exits first
    or takes over a minute."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(OSError):
            if call_api(base, "/v1/health", key=key)["status"] == "ok":
                return
        time.sleep(0.2)
    process.kill()
    process.wait()
    pytest.fail(f"attn-serve did not become healthy:\n{log.read_text(encoding='utf-8')}")


@contextlib.contextmanager
def serving(run_dir: Path, log: Path, *options: str) -> Iterator[str]:
    """``attn-serve RUN_DIR --port PORT OPTIONS`` in a subprocess, healthy; its base URL. It is
    stopped with SIGTERM at the end and must exit 0."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("ATTN_SERVE_API_KEY", None)
    command = [Path(sys.executable).parent / "attn-serve", run_dir, "--port", str(port), *options]
    key = options[options.index("--api-key") + 1] if "--api-key" in options else None
    with log.open("w", encoding="utf-8") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    wait_for_health(base, process, log, key)
    try:
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        assert code == 0, log.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def server(run_dir, tmp_path_factory) -> Iterator[str]:
    """The base URL of attn-serve serving ``run_dir`` without an API key."""
    with serving(run_dir, tmp_path_factory.mktemp("serve") / "serve.log") as base:
        yield base


@pytest.fixture(scope="module")
def sentence(corpus) -> str:
    """A toy dev sentence (7 words, some 25 subwords: its heat map is wider than a phone), or
    ``EXPLORER_SENTENCE``."""
    if os.environ.get("EXPLORER_SENTENCE"):
        return os.environ["EXPLORER_SENTENCE"]
    return (corpus / "dev.src").read_text(encoding="utf-8").splitlines()[0]


@pytest.fixture
def page(browser):
    """A fresh desktop-sized page; JavaScript errors and console errors fail the test."""
    context = browser.new_context(viewport=DESKTOP)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.on("console", lambda message: message.type == "error" and errors.append(message.text))
    yield tab
    context.close()
    assert errors == []


def translate_in_page(page, base: str, sentence: str, n_best: int | None = None) -> None:
    """Open the explorer, type ``sentence`` (and ``n_best``), press Enter and wait for the
    translation."""
    page.goto(base + "/")
    page.wait_for_selector("#translate:enabled")
    if n_best:
        page.fill("#nbest", str(n_best))
    page.fill("#source", sentence)
    page.press("#source", "Enter")
    page.wait_for_function(DONE)
    assert page.text_content("#translation"), page.text_content("#status")


def api_answer(base: str, sentence: str, n_best: int | None = None) -> dict:
    """The API's translation of ``sentence`` for the request the page sends (model defaults)."""
    decode = call_api(base, "/v1/model")["decode"]
    body = {"text": [sentence], "beam": decode["beam_size"], "n_best": n_best or decode["n_best"],
            "attention": True, "alignments": True}  # fmt: skip
    return call_api(base, "/v1/translate", body)["translations"][0]


def selected_map(maps: list, layer: int | None, head: int | None) -> list[list[float]]:
    """The map the page shows: ``maps[layer][head]``, or the mean over layers and/or heads
    (None) summed layer by layer, head by head, then divided once, as the page does (not
    ``sum()``, which compensates rounding since Python 3.12)."""
    layers = maps if layer is None else [maps[layer]]
    picked = [matrix for heads in layers for matrix in (heads if head is None else [heads[head]])]
    mean = []
    for row in range(len(picked[0])):
        mean.append([])
        for col in range(len(picked[0][0])):
            total = 0.0
            for matrix in picked:
                total += matrix[row][col]
            mean[-1].append(total / len(picked))
    return mean


def to_fixed(weight: float) -> str:
    """``weight.toFixed(4)`` (a weight or a score) as JavaScript writes it: the exact binary
    value rounded, exact ties (an average such as 1/32) away from zero, where Python's ``.4f``
    rounds them to even."""
    return str(Decimal(weight).quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP))


def check_highlight(page, hovered: str, index: int, weighed: str, weights: list[float]) -> None:
    """After hovering/focusing chip ``index`` of strip ``hovered``, the chips of strip
    ``weighed`` carry the weights to 4 decimals and exactly the rule's chips are highlighted."""
    states = page.eval_on_selector_all(f"{weighed} .token", CHIP_STATES)
    assert [chip_index for chip_index, _, _ in states] == list(range(len(weights)))
    largest = max(weights)
    expected = {i for i, weight in enumerate(weights) if weight >= 0.5 * largest}
    assert {i for i, lit, _ in states if lit} == expected, f"{hovered} chip {index}"
    assert [shown for _, _, shown in states] == [to_fixed(weight) for weight in weights]


def hover_and_check(page, rows: list[list[float]], query: int, key: int) -> None:
    """Hover target chip ``query`` (its row) and then source chip ``key`` (its column)."""
    page.hover(f"#tgt-tokens .token[data-index='{query}']")
    check_highlight(page, "#tgt-tokens", query, "#src-tokens", rows[query])
    page.hover(f"#src-tokens .token[data-index='{key}']")
    check_highlight(page, "#src-tokens", key, "#tgt-tokens", [row[key] for row in rows])


def test_translation_and_n_best_equal_the_api(page, server, sentence):
    model = call_api(server, "/v1/model")
    translate_in_page(page, server, sentence, n_best=2)
    assert page.text_content("#model-info [data-key='family']") == model["family"]
    assert page.input_value("#beam") == str(model["decode"]["beam_size"])
    expected = api_answer(server, sentence, n_best=2)
    assert page.text_content("#translation") == expected["translation"] != ""
    shown = page.eval_on_selector_all(
        "#nbest-list li",
        "items => items.map(li => [li.querySelector('.hypothesis').textContent,"
        " li.querySelector('.score').textContent])",
    )
    assert shown == [
        [entry["translation"], to_fixed(entry["score"])] for entry in expected["n_best"]
    ]
    words = page.eval_on_selector_all("#alignment .word", "nodes => nodes.map(n => n.textContent)")
    assert words == sentence.split() + expected["translation"].split()
    assert page.locator("#alignment line.link").count() == len(expected["alignment"].split())


def test_hover_and_keyboard_highlight_follow_the_rule(page, server, sentence):
    translate_in_page(page, server, sentence)
    attention = api_answer(server, sentence)["attention"]
    layers = len(attention["cross"])
    assert page.input_value("#map-kind") == "cross"
    assert (page.input_value("#layer"), page.input_value("#head")) == (str(layers), "avg")
    hover_and_check(page, selected_map(attention["cross"], layers - 1, None), query=1, key=0)
    page.select_option("#layer", "avg")  # the mean over every layer and head
    hover_and_check(page, selected_map(attention["cross"], None, None), query=0, key=1)

    page.select_option("#layer", label="1")
    page.select_option("#head", label="2")
    rows = selected_map(attention["cross"], 0, 1)
    hover_and_check(page, rows, query=1, key=1)
    page.mouse.move(1, 1)  # the hover ends: no highlight, no weights left
    states = page.eval_on_selector_all(".token", CHIP_STATES)
    assert [(lit, weight) for _, lit, weight in states] == [(False, None)] * len(states)

    page.focus("#tgt-tokens .token[data-index='0']")
    check_highlight(page, "#tgt-tokens", 0, "#src-tokens", rows[0])
    page.keyboard.press("ArrowRight")
    focused = page.evaluate("document.activeElement.closest('#tgt-tokens') !== null && "
                            "document.activeElement.dataset.index")  # fmt: skip
    assert focused == "1"
    check_highlight(page, "#tgt-tokens", 1, "#src-tokens", rows[1])
    page.keyboard.press("Shift+Tab")  # back to chip 0 by Tab order: its row again
    check_highlight(page, "#tgt-tokens", 0, "#src-tokens", rows[0])


def cell_weights(page) -> dict[tuple[int, int], str]:
    """The heat map's cells: (row, col) -> data-weight."""
    cells = page.eval_on_selector_all(
        "#matrix [data-row][data-col]",
        "cells => cells.map(c => [Number(c.dataset.row), Number(c.dataset.col), c.dataset.weight])",
    )
    return {(row, col): weight for row, col, weight in cells}


def test_self_attention_maps_and_screenshots(page, server, sentence, tmp_path):
    translate_in_page(page, server, sentence)
    attention = api_answer(server, sentence)["attention"]
    kinds = page.eval_on_selector_all("#map-kind option", "o => o.map(x => x.textContent)")
    assert kinds == ["Cross-attention", "Encoder self-attention", "Decoder self-attention"]
    page.select_option("#layer", label="1")
    page.select_option("#head", label="2")
    for kind, tokens in (("encoder", "src_tokens"), ("decoder", "tgt_tokens")):
        page.select_option("#map-kind", kind)
        size = len(attention[tokens])
        cells = cell_weights(page)
        assert len({row for row, _ in cells}) == size and len(cells) == size * size
        assert cells == {(r, c): to_fixed(w) for r, row in enumerate(attention[kind][0][1])
                         for c, w in enumerate(row)}  # fmt: skip
        strips = [page.locator(f"{strip} .token").all_text_contents()
                  for strip in ("#src-tokens", "#tgt-tokens")]  # fmt: skip
        assert strips == [attention[tokens], attention[tokens]]
    hover_and_check(page, selected_map(attention["decoder"], 0, 1), query=2, key=1)

    page.select_option("#map-kind", "cross")
    page.evaluate("document.activeElement.blur()")  # no focus ring in the picture
    page.hover("#tgt-tokens .token[data-index='1']")
    shots = [tmp_path / "explorer.png"]
    if os.environ.get("EXPLORER_SCREENSHOT"):
        shots.append(Path(os.environ["EXPLORER_SCREENSHOT"]))
    page.screenshot(path=shots[0], full_page=True)
    for extra in shots[1:]:
        shutil.copyfile(shots[0], extra)
    page.set_viewport_size(PHONE)
    page.screenshot(path=tmp_path / "explorer-phone.png", full_page=True)
    # usable at phone width: the page never scrolls sideways, the heat map scrolls in its box
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    box = page.eval_on_selector("#matrix", "m => [m.scrollWidth, m.clientWidth]")
    assert box[1] <= PHONE["width"]
    if not os.environ.get("EXPLORER_SENTENCE"):  # the toy sentence's map is wider than a phone
        assert box[0] > box[1]


def test_server_errors_are_shown_with_their_field(browser, server, sentence):
    body = {"text": [sentence], "beam": 2, "n_best": 3}
    with pytest.raises(urllib.error.HTTPError) as refused:
        call_api(server, "/v1/translate", body)
    answer = json.load(refused.value)
    context = browser.new_context(viewport=DESKTOP)  # the 422 is logged: no error check here
    tab = context.new_page()
    tab.goto(server + "/")
    tab.wait_for_selector("#translate:enabled")
    tab.fill("#beam", "2")
    tab.fill("#nbest", "3")
    tab.fill("#source", sentence)
    tab.click("#translate")
    tab.wait_for_selector("#status.error")
    assert tab.text_content("#status") == answer["error"]
    assert answer["field"] == "n_best" and tab.get_attribute("#nbest", "aria-invalid") == "true"
    assert tab.text_content("#translation") == ""
    context.close()


def test_api_key_is_asked_for_and_sent(browser, run_dir, sentence, tmp_path):
    key = "explorer-test-key"
    with serving(run_dir, tmp_path / "serve.log", "--api-key", key) as base:
        context = browser.new_context(viewport=DESKTOP)
        tab = context.new_page()
        tab.goto(base + "/")
        tab.wait_for_selector("#api-key", state="visible")
        assert tab.locator("#translate").is_disabled()
        tab.fill("#api-key", key)
        tab.press("#api-key", "Enter")
        tab.wait_for_selector("#translate:enabled")
        assert tab.evaluate("sessionStorage.getItem('attn-serve-api-key')") == key
        tab.fill("#source", sentence)
        tab.click("#translate")
        tab.wait_for_function(DONE)
        expected = call_api(base, "/v1/translate", {"text": [sentence]}, key=key)
        assert tab.text_content("#translation") == expected["translations"][0]["translation"]
        context.close()


def test_api_documentation_renders_offline(browser, server):
    tab = browser.new_page()
    try:
        tab.goto(server + "/docs")
        tab.wait_for_selector('[data-path="/v1/translate"]', timeout=30_000)
        assert "Unable to render" not in tab.content()
    finally:
        tab.close()
