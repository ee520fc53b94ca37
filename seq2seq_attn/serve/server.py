"""Running the app with uvicorn: bind, serve until SIGINT or SIGTERM, then stop accepting,
finish the requests in flight (and the jobs they queued) and return, so the process exits 0."""

from __future__ import annotations

import contextlib
import ipaddress
import signal
import socket
from collections.abc import Callable, Iterator

import uvicorn
from fastapi import FastAPI

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (``127.0.0.1``, ``::1``,
    ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


class GracefulServer(uvicorn.Server):
    """uvicorn's server, but a stop signal ends :meth:`serve` normally: uvicorn's own
    handling re-raises the signal once it has shut down, which would end the process with
    the signal's status. A second SIGINT still forces the exit (requests in flight dropped).
    ``on_ready`` is called once the socket listens."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_ready = on_ready

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Stop signals call uvicorn's ``handle_exit`` while serving; nothing is re-raised."""
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's startup, then ``on_ready`` when it listens."""
        await super().startup(sockets=sockets)
        if self.started and not self.should_exit:
            self.on_ready()


def serve(
    app: FastAPI,
    host: str,
    port: int,
    on_ready: Callable[[], None],
    shutdown_timeout: float,
    access_log: bool,
) -> str:
    """Serve ``app`` on ``host:port`` until a stop signal; ``shutdown_timeout`` seconds for
    the requests in flight at the stop (then they are cancelled). Returns how it ended:
    ``"stopped"`` (requests in flight answered), ``"forced"`` (a second Ctrl-C: they were
    dropped) or ``"failed"`` (it could not bind or start the model worker; uvicorn logged
    why)."""
    config = uvicorn.Config(
        app, host=host, port=port, log_level="info" if access_log else "warning",
        access_log=access_log, timeout_graceful_shutdown=shutdown_timeout, lifespan="on",
    )  # fmt: skip
    server = GracefulServer(config, on_ready)
    try:
        server.run()
    except SystemExit:  # uvicorn exits 1 when it cannot bind, 3 when the lifespan fails
        return "failed"
    if not server.started:
        return "failed"
    return "forced" if server.force_exit else "stopped"
