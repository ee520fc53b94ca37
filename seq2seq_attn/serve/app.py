"""The ``attn-serve`` ASGI application (FastAPI on Starlette).

Routes: ``POST /v1/translate`` (sentences of concurrent requests translated together by the
:class:`~seq2seq_attn.serve.batcher.DynamicBatcher`), ``GET /v1/health``, ``GET /v1/model``,
the OpenAPI page at ``/docs`` (Swagger UI served from the vendored ``swagger-ui-bundle``
package: no CDN), and the attention explorer at ``/`` with its files under ``/static``.

Every error is JSON, ``{"error": message, "field": name or null}``: 422 for a field out of
range or a request beyond the limits, 400 for a body that is not JSON, 413 for a body larger
than the limit, 401 without the API key, 500 when the model fails (the server goes on).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .batcher import DynamicBatcher
from .schema import RequestError, ServeLimits, TranslateRequest, check_limits, request_options

STATIC_DIR = Path(__file__).parent / "static"
# The explorer's and the API documentation's own files need no key: they hold no data and
# reach no model (the page asks for the key when the API answers 401).
PUBLIC_PATHS = ("/", "/favicon.ico", "/docs", "/openapi.json")
PUBLIC_PREFIXES = ("/static/", "/docs-static/")


@dataclass(frozen=True)
class ServeSettings:
    """How the app serves: request ``limits``, the ``api_key`` every API request must carry
    (None: none needed), and the ``/v1/model`` answer."""

    limits: ServeLimits
    api_key: str | None
    model_info: dict


def create_app(batcher: DynamicBatcher, settings: ServeSettings) -> FastAPI:
    """The application around a (not yet started) ``batcher``: the worker starts with the
    app and, at shutdown, answers every request already queued before it ends."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            await asyncio.to_thread(batcher.close)

    app = FastAPI(
        title="attn-serve",
        summary="Translation with dynamic batching, and an attention explorer at /.",
        version="1",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.openapi_version = "3.0.3"  # the vendored Swagger UI (4.x) renders OpenAPI 3.0 only
    _add_error_handlers(app)
    _add_api_routes(app, batcher, settings)
    _add_pages(app)
    app.add_middleware(LimitsMiddleware, settings=settings)
    return app


def _add_api_routes(app: FastAPI, batcher: DynamicBatcher, settings: ServeSettings) -> None:
    """``/v1/translate``, ``/v1/health`` and ``/v1/model``."""
    translator = batcher.translator

    @app.post("/v1/translate", summary="Translate sentences")
    async def translate(body: TranslateRequest, request: Request) -> JSONResponse:
        """Translate ``text`` (one result per sentence, in input order) with the options of
        ``attn-translate``; ``attention`` and ``alignments`` add the best translation's
        attention maps and word alignment."""
        check_limits(body, settings.limits)
        options = request_options(body, translator.decode, translator.capabilities)
        future = asyncio.wrap_future(batcher.submit(body.text, options))
        departed = asyncio.ensure_future(_client_departed(request))
        try:
            await asyncio.wait((future, departed), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # a stop that could not wait: drop the queued job
            future.cancel()
            raise
        finally:
            departed.cancel()
        if not future.done():  # the client left: drop its job unless it is running
            future.cancel()
            return JSONResponse({"error": "client disconnected", "field": None}, 499)
        try:
            results = future.result()
        except Exception as error:  # the model failed on this batch; the server goes on
            return _error(500, f"translation failed: {type(error).__name__}: {error}")
        if not body.attention:
            return JSONResponse({"translations": results})
        # every layer's and head's maps can be megabytes of JSON: encoded off the event loop
        encoded = await asyncio.to_thread(_json_bytes, {"translations": results})
        return Response(encoded, media_type="application/json")

    @app.get("/v1/health", summary="Liveness and queue length")
    async def health() -> JSONResponse:
        """``ok`` while the model worker runs (else 503), the sentences waiting for it, the
        sentences translated so far, the whole-batch searches run (``sentences`` over
        ``searches``: the batch that gathering reaches, with no streaming) and the steps of
        running searches with the sentences they held in all (``step_sentences`` over
        ``steps``: the batch that streaming keeps) and the seconds the model worker spent
        translating rather than waiting for requests (``busy_seconds``)."""
        stats = batcher.stats
        answer = {
            "status": "ok" if batcher.running else "stopped",
            "queued_sentences": batcher.queued_sentences,
            "sentences": stats.sentences,
            "searches": stats.searches,
            "steps": stats.steps,
            "step_sentences": stats.step_sentences,
            "busy_seconds": round(stats.busy_seconds, 3),
        }
        return JSONResponse(answer, status_code=200 if batcher.running else 503)

    @app.get("/v1/model", summary="What is loaded")
    async def model() -> dict:
        """Family, size, languages, attention layers and heads, decode defaults, backend,
        device, precision, capabilities and request limits."""
        return settings.model_info


def _json_bytes(payload: dict) -> bytes:
    """``payload`` as JSONResponse encodes it."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


async def _client_departed(request: Request) -> None:
    """Return when the client has closed the connection (the request body is already read,
    so the next message can only be the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _add_pages(app: FastAPI) -> None:
    """The explorer at ``/`` and ``/static``, and Swagger UI at ``/docs`` from the vendored
    ``swagger-ui-bundle`` package."""
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount("/docs-static", StaticFiles(directory=str(swagger_ui_path)), name="docs-static")

    @app.get("/", include_in_schema=False)
    async def explorer() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="openapi.json",
            title="attn-serve API",
            swagger_js_url="docs-static/swagger-ui-bundle.js",
            swagger_css_url="docs-static/swagger-ui.css",
            swagger_favicon_url="docs-static/favicon-32x32.png",
        )


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as ``{"error": ..., "field": ...}``."""

    @app.exception_handler(RequestError)
    async def refused(_: Request, error: RequestError) -> JSONResponse:
        return _error(error.status, str(error), error.field)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        problem = error.errors()[0]
        if problem["type"] == "json_invalid":
            return _error(400, f"the body is not valid JSON ({problem['msg']})")
        location = [part for part in problem["loc"] if part != "body"]
        field = "".join(
            f"[{part}]" if isinstance(part, int) else f".{part}" for part in location
        ).lstrip(".")
        if not location:  # not an object, or no body
            return _error(422, 'send a JSON object such as {"text": ["a sentence"]}')
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown option (see /docs for the options)"
        return _error(422, f"{field or 'body'}: {message}", field or None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return _error(error.status_code, str(error.detail))


def _error(status: int, message: str, field: str | None = None) -> JSONResponse:
    """A JSON error answer."""
    return JSONResponse({"error": message, "field": field}, status_code=status)


class LimitsMiddleware:
    """Checked before the app sees a request: the API key (when one is set) on every path
    but the explorer's own files, and the body size (413 past ``limits.max_body_bytes``,
    counted as it arrives, whatever the Content-Length says)."""

    def __init__(self, app: ASGIApp, settings: ServeSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self._authorised(scope):
            await _error(
                401, "missing or wrong API key: send it as the X-API-Key header (or "
                "Authorization: Bearer KEY)",
            )(scope, receive, send)  # fmt: skip
            return
        limit = self.settings.limits.max_body_bytes
        body = await _read_body(receive, limit)
        if body is None:
            await _error(
                413, f"the request body exceeds {limit} bytes (attn-serve --max-body-bytes); "
                "send fewer or shorter sentences per request",
            )(scope, receive, send)  # fmt: skip
            return
        await self.app(_as_json(scope), _replay(body, receive), send)

    def _authorised(self, scope: Scope) -> bool:
        """Whether the request may pass: no key set, a public path, or the right key."""
        key = self.settings.api_key
        path = scope["path"]
        if key is None or path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            return True
        headers = dict(scope["headers"])
        given = headers.get(b"x-api-key", b"")
        bearer = headers.get(b"authorization", b"")
        if bearer.lower().startswith(b"bearer "):
            given = given or bearer[7:].strip()
        return hmac.compare_digest(given, key.encode())


def _as_json(scope: Scope) -> Scope:
    """``scope`` with its body labelled JSON: the API takes JSON bodies only, however they
    are labelled (``curl -d`` says form) or not labelled at all."""
    headers = [(name, value) for name, value in scope["headers"] if name != b"content-type"]
    return {**scope, "headers": [*headers, (b"content-type", b"application/json")]}


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None as soon as it passes ``limit`` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client left: the app sees it too
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` in one message, then the client's own messages
    (the disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
