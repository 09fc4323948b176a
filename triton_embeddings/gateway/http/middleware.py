"""The request middleware (pure ASGI): request ids, the body cap, UTF-8 bodies, the access log and request
metrics; and the logging setup whose lines carry the request id."""

from __future__ import annotations

import contextvars
import logging
import re
import time
import uuid

from triton_embeddings.gateway.errors import APIError, ErrorKind
from triton_embeddings.gateway.http.errors import error_response, internal_error_response
from triton_embeddings.gateway.metrics import GatewayMetrics
from triton_embeddings.gateway.settings import Settings

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
        if scope["path"] == "/v1/files":  # batch input files: their own cap
            cap = self.settings.batch_max_upload_bytes
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
