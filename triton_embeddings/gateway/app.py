"""FastAPI app factory: lifespan (Triton client, cache, cl100k_base), request context middleware, routes."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI

from triton_embeddings.gateway.cache import Cache, make_cache
from triton_embeddings.gateway.errors import APIError, ErrorKind, error_response, install_error_handlers, internal_error
from triton_embeddings.gateway.metrics import GatewayMetrics
from triton_embeddings.gateway.router import router
from triton_embeddings.gateway.service import EmbeddingService
from triton_embeddings.gateway.settings import Settings
from triton_embeddings.gateway.token_ids import TokenDecoder, load_cl100k
from triton_embeddings.gateway.triton import TritonBackend

log = logging.getLogger("gateway")
access_log = logging.getLogger("gateway.access")

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
EMBEDDING_ROUTES = {"/v1/embeddings", "/embeddings"}


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
        given = ""
        length = None
        for k, v in scope["headers"]:
            if k == b"x-request-id":
                given = v.decode("latin-1")
            elif k == b"content-length":
                length = v
        rid = given if _SAFE_ID.match(given) else uuid.uuid4().hex
        token = request_id_var.set(rid)
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        t0 = time.perf_counter()
        status = 500
        started = False

        async def send_with_id(message):
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", rid.encode())]
            await send(message)

        try:
            cap = self.settings.max_body_bytes
            too_large = False
            if length is not None:
                try:
                    too_large = int(length) > cap
                except ValueError:
                    too_large = False
            if not too_large and scope["method"] in ("POST", "PUT", "PATCH"):
                body, too_large = await _read_body(receive, cap)
                receive = _replay(body, receive)
            if too_large:
                err = APIError(ErrorKind.BODY_TOO_LARGE, f"Request body too large: the limit is {cap} bytes.")
                return await error_response(err)(scope, receive, send_with_id)
            try:
                await self.app(scope, receive, send_with_id)
            except Exception:
                if started:
                    raise
                log.exception("unexpected error (request id %s)", rid)
                await error_response(internal_error(rid))(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - t0
            route = scope.get("route")
            path = getattr(route, "path", None) or "other"
            model = state.get("model_label", "-")
            self.metrics.requests.labels(path, model, str(status)).inc()
            if path in EMBEDDING_ROUTES and model != "-":
                self.metrics.latency.labels(model).observe(elapsed)
            if self.settings.access_log:
                access_log.info(
                    "%s %s %s %d %.1fms",
                    scope.get("client", ("-",))[0],
                    scope["method"],
                    scope["path"],
                    status,
                    elapsed * 1000,
                )
            request_id_var.reset(token)


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


def create_app(
    settings: Settings | None = None,
    *,
    backend: TritonBackend | None = None,
    cache: Cache | None = None,
    decoder: TokenDecoder | None = None,
) -> FastAPI:
    """Build the gateway app; `backend`, `cache` and `decoder` can be injected (unit tests)."""
    settings = settings or Settings()
    metrics = GatewayMetrics(settings.triton_metrics_url, settings.triton_metrics_timeout_s)
    api_keys = [k.encode("utf-8") for k in settings.load_api_keys()]

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        be = backend or TritonBackend(
            settings.triton_grpc_url,
            timeout_s=settings.triton_timeout_s,
            ready_timeout_s=settings.ready_timeout_s,
            refresh_interval_s=settings.refresh_interval_s,
            only_models=settings.models,
        )
        ca = cache or make_cache(
            settings.cache,
            size=settings.cache_size,
            ttl_s=settings.cache_ttl_s,
            redis_url=settings.redis_url.get_secret_value() if settings.redis_url else None,
            redis_timeout_s=settings.redis_timeout_s,
            redis_retry_s=settings.redis_retry_s,
        )
        ca.on_error = metrics.cache_errors.inc
        dec = decoder or await _load_decoder(settings)
        await be.start()
        app.state.service = EmbeddingService(settings, be, ca, metrics, dec)
        log.info(
            "gateway ready: triton=%s cache=%s token-ids=%s auth=%s",
            settings.triton_grpc_url,
            ca.name,
            "on" if dec.available else "off",
            "on" if api_keys else "off",
        )
        try:
            yield
        finally:
            await be.close()
            await ca.close()

    app = FastAPI(
        title="triton-embeddings gateway",
        summary="OpenAI-compatible embeddings API over Triton Inference Server.",
        version="0.1.0",
        lifespan=lifespan,
        # FastAPI's built-in OpenTelemetry is off: it looked up the global providers on every request (a
        # sixth of the gateway's CPU under load); the gateway's own metrics are Prometheus (/metrics).
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.api_keys = api_keys
    install_error_handlers(app, settings.retry_after_s)
    app.include_router(router)
    app.add_middleware(RequestContextMiddleware, settings=settings, metrics=metrics)
    return app
