"""How the gateway is served: uvicorn (httptools) with a graceful drain, a request read timeout, a
connection cap, and each response's head and body sent in one write."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from triton_embeddings.gateway.errors import APIError, ErrorKind
from triton_embeddings.gateway.settings import Settings

log = logging.getLogger("gateway")


class CoalescingTransport:
    """Holds the writes made in one event-loop turn and sends them together.

    Starlette sends a response's start and body as two ASGI messages and uvicorn writes each at once, so
    the head could leave alone: a crash between the two writes would leave a proxy holding a 200 it can
    neither finish nor retry. Joined, a crash loses either nothing or the whole response.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def flush(self) -> None:
        if self._pending and not self._transport.is_closing():
            self._transport.write(b"".join(self._pending))
        self._pending.clear()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str):
        return getattr(self._transport, name)


async def _over_capacity(scope, receive, send) -> None:
    """The answer on a connection past `max_connections`: an OpenAI-shaped 503, then close."""
    err = APIError(ErrorKind.UPSTREAM_UNAVAILABLE, "Too many open connections to this server; retry shortly.")
    body = orjson.dumps(err.body())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"retry-after", b"1"), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class GatewayProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus: single-write responses, a deadline for reading each request
    (uvicorn only times out idle connections after a response), a connection cap, and `Connection:
    close` on every response once the server drains."""

    read_timeout_s: float = 30.0
    max_connections: int = 1024

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
        self._read_timer: asyncio.TimerHandle | None = None
        self._awaiting_request = True
        self._arm_read_timer()
        if len(self.connections) > self.max_connections:
            self.app = _over_capacity

    def data_received(self, data: bytes) -> None:
        if self._awaiting_request and self._read_timer is None:
            self._arm_read_timer()  # a keep-alive connection starts its next request
        super().data_received(data)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if getattr(self.server_state, "draining", False) and self.cycle is not None:
            self.cycle.keep_alive = False  # move keep-alive clients (a proxy's pool) off this replica

    def on_message_complete(self) -> None:
        self._awaiting_request = False
        self._cancel_read_timer()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._awaiting_request = True  # uvicorn's keep-alive timer covers the idle time until new bytes
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_read_timer()
        super().connection_lost(exc)

    def _arm_read_timer(self) -> None:
        self._read_timer = self.loop.call_later(self.read_timeout_s, self._read_timed_out)

    def _cancel_read_timer(self) -> None:
        if getattr(self, "_read_timer", None) is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if not self.transport.is_closing():
            self.transport.close()


class GatewayServer(uvicorn.Server):
    """On SIGTERM: readiness goes false (`on_drain`), requests are still served for `shutdown_delay_s`
    (so load balancers stop sending), then uvicorn stops accepting and drains in-flight requests for at
    most `drain_timeout_s`. SIGINT (Ctrl-C) skips the delay, as does a second SIGTERM; Ctrl-C during the
    drain quits at once."""

    def __init__(self, config: uvicorn.Config, *, shutdown_delay_s: float, on_drain: Callable[[], None]):
        super().__init__(config)
        self.shutdown_delay_s = shutdown_delay_s
        self.on_drain = on_drain
        self.drain_deadline: float | None = None

    def handle_exit(self, sig: int, frame) -> None:
        self.server_state.draining = True  # type: ignore[attr-defined]
        self.on_drain()
        if sig == signal.SIGTERM and self.drain_deadline is None and self.shutdown_delay_s > 0:
            self._captured_signals.append(sig)  # uvicorn re-raises it once stopped, as without the delay
            self.drain_deadline = time.monotonic() + self.shutdown_delay_s
            log.info("SIGTERM: not ready; stop accepting in %.1fs", self.shutdown_delay_s)
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.drain_deadline is not None and time.monotonic() >= self.drain_deadline:
            self.should_exit = True
        return await super().on_tick(counter)


def make_server(app, settings: Settings) -> GatewayServer:
    """The uvicorn server for `app` configured from `settings`."""
    protocol = type("GatewayProtocol", (GatewayProtocol,), {
        "read_timeout_s": settings.request_read_timeout_s,
        "max_connections": settings.max_connections,
    })
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=protocol,
        log_config=None,  # keep our handler (request ids)
        log_level=settings.log_level,
        access_log=False,  # ours logs request ids and never bodies
        timeout_graceful_shutdown=settings.drain_timeout_s,
        timeout_keep_alive=settings.keep_alive_s,
    )

    def on_drain() -> None:
        app.state.draining = True

    return GatewayServer(config, shutdown_delay_s=settings.shutdown_delay_s, on_drain=on_drain)
