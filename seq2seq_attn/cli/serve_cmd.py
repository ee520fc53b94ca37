"""``attn-serve``: a translation server with dynamic batching and an attention explorer."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Annotated

import torch
import typer

from ..translation import TranslationSettings, Translator
from .console import (
    ComputeTypeOption,
    DeviceOption,
    PrecisionOption,
    err_console,
    fail,
    package_logging,
)
from .translate_cmd import open_model, translation_settings

serve_app = typer.Typer(
    add_completion=False,
    rich_markup_mode="rich",
    help="Serve a trained model over HTTP: a JSON API and an attention explorer in the browser.",
)

API_KEY_VARIABLE = "ATTN_SERVE_API_KEY"
LIMITS_PANEL = "Limits and batching"


@serve_app.command()
def serve_command(
    model: Annotated[
        Path,
        typer.Argument(
            metavar="MODEL",
            help="A .pt checkpoint, a run directory, or a folder written by attn-export.",
        ),
    ],
    ensemble: Annotated[
        list[Path] | None,
        typer.Option(
            metavar="CHECKPOINT", help="Another checkpoint to ensemble with (repeatable)."
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on; other than loopback needs --api-key.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar=API_KEY_VARIABLE,
            show_envvar=True,
            help="Every API request must carry this key (header X-API-Key or Authorization: "
            "Bearer).",
        ),
    ] = None,
    device: DeviceOption = "auto",
    precision: PrecisionOption = None,
    compute_type: ComputeTypeOption = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for the model.")] = None,
    beam: Annotated[
        int | None, typer.Option(help="Default beam size \\[default: the model's].")
    ] = None,
    length_penalty: Annotated[
        float | None, typer.Option(help="Default GNMT length penalty \\[default: the model's].")
    ] = None,
    batch_tokens: Annotated[
        int, typer.Option(help="Source token slots per batch.", rich_help_panel=LIMITS_PANEL)
    ] = 4096,
    batch_wait_ms: Annotated[
        float,
        typer.Option(
            help="When the model is idle, how long it goes on gathering requests for a batch "
            "after the last one arrived (at most 10 times this in all).",
            rich_help_panel=LIMITS_PANEL,
        ),
    ] = 10.0,
    streaming: Annotated[
        bool,
        typer.Option(
            help="Let the sentences of new requests join running searches between their steps "
            "(plain searches on checkpoints); off: every request waits for a whole-batch search, "
            "which served closed-loop clients better here (docs/serving.md).",
        ),
    ] = False,
    max_sentences: Annotated[
        int, typer.Option(help="Sentences per request.", rich_help_panel=LIMITS_PANEL)
    ] = 64,
    max_chars: Annotated[
        int, typer.Option(help="Characters per sentence.", rich_help_panel=LIMITS_PANEL)
    ] = 1000,
    max_body_bytes: Annotated[
        int, typer.Option(help="Bytes per request body.", rich_help_panel=LIMITS_PANEL)
    ] = 1 << 20,
    shutdown_timeout: Annotated[
        float,
        typer.Option(
            help="Seconds to finish requests in flight at a stop.", rich_help_panel=LIMITS_PANEL
        ),
    ] = 60.0,
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = False,
) -> None:
    """Serve MODEL: POST /v1/translate (JSON), GET /v1/health, GET /v1/model, the API
    documentation at /docs and the attention explorer at /.

    Sentences of concurrent requests are translated together (dynamic batching: gathered into
    shared batches, or with --streaming joining running searches between their steps). Ctrl-C
    or SIGTERM stops accepting, finishes the requests in flight and exits 0.
    """
    from ..serve import ServeLimits, ServeSettings, create_app, describe_model, is_loopback, serve
    from ..serve.batcher import DynamicBatcher

    if api_key is not None and not api_key.strip():
        raise fail(f"--api-key (or {API_KEY_VARIABLE}) is empty: give a key, or none", code=2)
    if api_key is None and not is_loopback(host):
        raise fail(
            f"--host {host} makes the server reachable from other machines: give --api-key KEY "
            f"(or set {API_KEY_VARIABLE}) so that every request must carry it",
            code=2,
        )
    if batch_wait_ms < 0 or not shutdown_timeout >= 0:
        raise fail("--batch-wait-ms and --shutdown-timeout: use 0 or more", code=2)
    try:
        limits = ServeLimits(max_sentences, max_chars, max_body_bytes)
    except ValueError as error:
        raise fail(str(error), code=2) from None
    if threads is not None:
        if threads < 1:
            raise fail(f"--threads {threads}: use 1 or more", code=2)
        torch.set_num_threads(threads)
    settings: TranslationSettings = translation_settings(
        device=device, precision=precision, compute_type=compute_type, beam_size=beam,
        length_penalty=length_penalty, max_tokens=batch_tokens, threads=threads,
    )  # fmt: skip
    with package_logging(None, live=False):
        translator = open_off_the_main_thread(model, settings, ensemble or [])
        info = describe_model(translator, model, 1 + len(ensemble or []), limits)
        batcher = DynamicBatcher(translator, batch_wait_ms / 1000, streaming=streaming)
        app = create_app(batcher, ServeSettings(limits, api_key, info))
        ended = serve(
            app, host, port, lambda: announce(info, host, port, api_key is not None),
            shutdown_timeout, access_log,
        )  # fmt: skip
    if ended == "failed":
        raise fail(f"cannot serve on {host}:{port} (see the error above)", code=1)
    if ended == "forced":
        raise fail("attn-serve: stopped at once; requests in flight were dropped", code=130)
    err_console.print("attn-serve: stopped", highlight=False)


def open_off_the_main_thread(
    model: Path, settings: TranslationSettings, ensemble: list[Path]
) -> Translator:
    """:func:`open_model` in a short-lived thread, so that the main thread (uvicorn's) never
    runs torch's parallel operations and only the model worker has an OpenMP team.

    Each thread that runs them keeps a team of its own (GNU OpenMP's, torch's CPU build), and
    with a team for the thread that loaded the model beside the worker's there are more OpenMP
    threads than cores: libgomp then cuts its spin-waiting short, and the worker's threads fell
    asleep between the operations of a search, which ran about 0.7x as fast. A thread's team
    ends with it. Exits (an unreadable model...) are raised here as from ``open_model``; Ctrl-C
    during a long load stops waiting for it at once (the loading thread is a daemon).
    """
    outcome: dict[str, object] = {}

    def load() -> None:
        try:
            outcome["translator"] = open_model(model, settings, ensemble)
        except BaseException as error:  # typer.Exit included: re-raised below
            outcome["error"] = error

    loader = threading.Thread(target=load, name="attn-serve-load", daemon=True)
    loader.start()
    loader.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["translator"]


def announce(info: dict, host: str, port: int, keyed: bool) -> None:
    """Say what is served where, once the server listens."""
    shown = f"[{host}]" if ":" in host else host
    address = f"http://{shown}:{port}"
    err_console.print(
        f"attn-serve: {info['name']} ({info['family']}, {info['backend']}) at {address}  "
        f"explorer: {address}/  API: {address}/docs  (pid {os.getpid()}; Ctrl-C stops)",
        highlight=False,
        soft_wrap=True,
    )
    if keyed:
        err_console.print(
            "attn-serve: an API key is required on every /v1 request (header X-API-Key)",
            highlight=False,
        )
