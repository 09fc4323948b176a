"""FastAPI app factory: lifespan (backend, cache, cl100k_base, registry, services), middleware, routes."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI

from triton_embeddings.gateway.backend import Backend
from triton_embeddings.gateway.cache import Cache, make_cache
from triton_embeddings.gateway.errors import (
    APIError,
    ErrorKind,
    error_response,
    install_error_handlers,
    internal_error_response,
)
from triton_embeddings.gateway.metrics import GatewayMetrics
from triton_embeddings.gateway.registry import ModelRegistry
from triton_embeddings.gateway.rerank import RerankService
from triton_embeddings.gateway.router import router
from triton_embeddings.gateway.routing import RoutedBackend
from triton_embeddings.gateway.service import EmbeddingService
from triton_embeddings.gateway.settings import Settings
from triton_embeddings.gateway.shadow import Shadow
from triton_embeddings.gateway.token_ids import TokenDecoder, load_cl100k
from triton_embeddings.gateway.triton import TritonBackend
from triton_embeddings.gateway.upstream import make_upstreams

log = logging.getLogger("gateway")
access_log = logging.getLogger("gateway.access")

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
# Routes whose latency is observed, and the kind of model they serve.
TIMED_ROUTES = {"/v1/embeddings": "embedding", "/embeddings": "embedding", "/v1/rerank": "rerank",
                "/v2/rerank": "rerank", "/rerank": "rerank"}


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every log record (from the request being handled)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def setup_logging(level: str) -> None:
    """Log lines carry the request id; uvicorn's own access log is replaced by ours (no bodies, no keys)."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class RequestContextMiddleware:
    """Pure ASGI: request id (honored or generated, returned), body cap (413), access log, request metrics."""

    def __init__(self, app, settings: Settings, metrics: GatewayMetrics):
        self.app = app
        self.settings = settings
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = _request_id(scope)
        token = request_id_var.set(rid)
        scope.setdefault("state", {})["request_id"] = rid
        response = _ResponseStart(send, rid)
        t0 = time.perf_counter()
        try:
            receive, cap_error = await self._capped(scope, receive)
            if cap_error is not None:
                return await error_response(cap_error)(scope, receive, response.send)
            try:
                await self.app(scope, receive, response.send)
            except Exception as exc:
                if response.started:
                    raise
                await internal_error_response(rid, exc)(scope, receive, response.send)
        finally:
            self._record(scope, response.status, time.perf_counter() - t0)
            request_id_var.reset(token)

    async def _capped(self, scope, receive) -> tuple[object, APIError | None]:
        """The body cap (by Content-Length when given, else while reading the body, then replayed); a body
        that is not UTF-8 is refused with its byte offset instead of a generic parse error."""
        cap = self.settings.max_body_bytes
        length = _header(scope, b"content-length")
        too_large = length.isdigit() and int(length) > cap
        if not too_large and scope["method"] in ("POST", "PUT", "PATCH"):
            body, too_large = await _read_body(receive, cap)
            receive = _replay(body, receive)
            if not too_large and (bad := _not_utf8(body)) is not None:
                return receive, bad
        if too_large:
            return receive, APIError(ErrorKind.BODY_TOO_LARGE, f"Request body too large: the limit is {cap} bytes.")
        return receive, None

    def _record(self, scope, status: int, elapsed: float) -> None:
        """Request metrics and the access log line (no bodies, no keys)."""
        path = getattr(scope.get("route"), "path", None) or "other"
        model = scope["state"].get("model_label", "-")
        self.metrics.requests.labels(path, model, str(status)).inc()
        if path in TIMED_ROUTES and model != "-":
            self.metrics.latency.labels(model, TIMED_ROUTES[path]).observe(elapsed)
        if self.settings.access_log:
            client = scope.get("client") or ("-",)
            access_log.info("%s %s %s %d %.1fms", client[0], scope["method"], scope["path"], status, elapsed * 1000)


class _ResponseStart:
    """Wraps `send`: adds `x-request-id` to the response and remembers its status (500 until one starts)."""

    def __init__(self, send, request_id: str):
        self._send = send
        self._header = (b"x-request-id", request_id.encode())
        self.status = 500
        self.started = False

    async def send(self, message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            self.status = message["status"]
            message["headers"] = [*message.get("headers", []), self._header]
        await self._send(message)


def _header(scope, name: bytes) -> str:
    """The last value of one request header ("" when absent)."""
    value = ""
    for k, v in scope["headers"]:
        if k == name:
            value = v.decode("latin-1")
    return value


def _request_id(scope) -> str:
    """The client's `X-Request-ID` when it is safe to log and echo, else a new one."""
    given = _header(scope, b"x-request-id")
    return given if _SAFE_ID.match(given) else uuid.uuid4().hex


async def _read_body(receive, cap: int) -> tuple[bytes, bool]:
    """Read the whole body, stopping as soon as it passes `cap`."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"", False
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > cap:
            return b"", True
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), False


def _not_utf8(body: bytes) -> APIError | None:
    """JSON bodies must be UTF-8 (RFC 8259); say where one is not, instead of a generic parse error."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as e:
        return APIError(
            ErrorKind.INVALID_REQUEST,
            f"The request body is not valid UTF-8: byte 0x{body[e.start]:02x} at byte offset {e.start} "
            f"({e.reason}). Send the JSON body encoded as UTF-8.",
        )
    return None


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # e.g. http.disconnect

    return replay


async def _load_decoder(settings: Settings) -> TokenDecoder:
    if settings.tiktoken_file is not None:  # configured: a broken file is a startup error
        return TokenDecoder(await asyncio.to_thread(load_cl100k, settings.tiktoken_file))
    try:
        enc = await asyncio.wait_for(asyncio.to_thread(load_cl100k, None), settings.tiktoken_load_timeout_s)
        return TokenDecoder(enc)
    except Exception as e:
        log.warning("token-id inputs disabled: %s", e)
        return TokenDecoder(None)


def _make_backend(settings: Settings) -> Backend:
    return TritonBackend(
        settings.triton_grpc_url,
        timeout_s=settings.triton_timeout_s,
        ready_timeout_s=settings.ready_timeout_s,
        refresh_interval_s=settings.refresh_interval_s,
        only_models=settings.models,
    )


def _route_upstreams(settings: Settings, local: Backend, metrics: GatewayMetrics) -> Backend:
    """The local backend alone, or routed together with the configured upstream APIs."""
    if not settings.upstreams:
        return local
    return RoutedBackend(local, make_upstreams(settings.upstreams, metrics))


def _make_cache(settings: Settings) -> Cache:
    return make_cache(
        settings.cache,
        size=settings.cache_size,
        ttl_s=settings.cache_ttl_s,
        redis_url=settings.redis_url.get_secret_value() if settings.redis_url else None,
        redis_timeout_s=settings.redis_timeout_s,
        redis_retry_s=settings.redis_retry_s,
    )


def _lifespan(settings: Settings, backend: Backend | None, cache: Cache | None, decoder: TokenDecoder | None):
    """Start the backend, cache and decoder; put the registry and the service on `app.state`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        be = _route_upstreams(settings, backend or _make_backend(settings), app.state.metrics)
        ca = cache or _make_cache(settings)
        ca.on_error = app.state.metrics.cache_errors.inc
        dec = decoder or await _load_decoder(settings)
        await be.start()
        app.state.registry = ModelRegistry(settings, be)
        app.state.service = EmbeddingService(settings, be, ca, app.state.metrics, dec)
        app.state.shadow = Shadow(app.state.registry.resolve_local, app.state.service.embed_uncached,
                                  app.state.metrics, settings.shadow_max_in_flight)
        app.state.rerank = RerankService(settings, app.state.service.batcher, ca, app.state.metrics)
        log.info(
            "gateway ready: triton=%s upstreams=%s cache=%s token-ids=%s auth=%s",
            settings.triton_grpc_url,
            {m: c.backend_name for m, c in settings.upstreams.items()} or "none",
            ca.name,
            "on" if dec.available else "off",
            "on" if app.state.api_keys else "off",
        )
        try:
            yield
        finally:
            await be.close()
            await ca.close()

    return lifespan


def create_app(
    settings: Settings | None = None,
    *,
    backend: Backend | None = None,
    cache: Cache | None = None,
    decoder: TokenDecoder | None = None,
) -> FastAPI:
    """Build the gateway app; `backend`, `cache` and `decoder` can be injected (unit tests)."""
    settings = settings or Settings()
    metrics = GatewayMetrics(settings.triton_metrics_url, settings.triton_metrics_timeout_s)
    app = FastAPI(
        title="triton-embeddings gateway",
        summary="OpenAI-compatible embeddings API over Triton Inference Server.",
        version="0.1.0",
        lifespan=_lifespan(settings, backend, cache, decoder),
        # FastAPI's built-in OpenTelemetry is off: it looked up the global providers on every request (a
        # sixth of the gateway's CPU under load); the gateway's own metrics are Prometheus (/metrics).
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.settings = settings
    app.state.draining = False  # set on SIGTERM by server.GatewayServer: /ready answers 503
    app.state.metrics = metrics
    app.state.api_keys = [k.encode("utf-8") for k in settings.load_api_keys()]
    install_error_handlers(app, settings.retry_after_s)
    app.include_router(router)
    app.add_middleware(RequestContextMiddleware, settings=settings, metrics=metrics)
    return app
