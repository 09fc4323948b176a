"""What every task shares around its computation: the in-flight gate, the limits, the token cap, and the
failure path that turns a failed call into the client's error (by the table in gateway/errors.py)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from triton_embeddings.gateway.backends.base import LOCAL, BackendError, ModelInfo, RerankModelInfo
from triton_embeddings.gateway.errors import (
    APIError,
    DeadlineExceeded,
    ErrorKind,
    SharedCallCancelled,
    client_error,
)
from triton_embeddings.gateway.metrics import GatewayMetrics
from triton_embeddings.gateway.pipeline.cache import CacheEntry
from triton_embeddings.gateway.settings import Settings

log = logging.getLogger("gateway.service")
T = TypeVar("T")
Info = ModelInfo | RerankModelInfo


def _server(info: Info) -> str:
    return "The inference server" if info.backend == LOCAL else "The upstream API for this model"


def check_unicode(text: str, what: str, param: str) -> None:
    """Text with an unpaired surrogate cannot be sent to the tokenizer: 400 naming the parameter."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise APIError(ErrorKind.INVALID_REQUEST, f"{what} is not valid Unicode (unpaired surrogate).",
                       param=param) from None


class Admission:
    """One task's gate (at most `max_in_flight` requests at once), its limits and its failure path."""

    def __init__(self, settings: Settings, metrics: GatewayMetrics):
        self.settings = settings
        self.metrics = metrics
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        """Requests admitted and not answered yet (the batch runner yields to them)."""
        return self._in_flight

    @contextmanager
    def gate(self) -> Iterator[None]:
        """Admit one request (429 past `max_in_flight`) for as long as its computation runs."""
        if self._in_flight >= self.settings.max_in_flight:
            raise APIError(ErrorKind.OVERLOADED, "The server is overloaded; retry shortly.")
        self._in_flight += 1
        self.metrics.in_flight.inc()
        try:
            yield
        finally:
            self._in_flight -= 1
            self.metrics.in_flight.dec()

    def check_count(self, n: int, limit: int, noun: str, param: str) -> None:
        """At most `limit` inputs (or documents) in one request: 400 naming the parameter."""
        if n > limit:
            raise APIError(ErrorKind.INVALID_REQUEST, f"Too many {noun}: {n}. At most {limit} {noun} per request.",
                           param=param)

    def check_tokens(self, tokens: int, param: str, what: str = "") -> None:
        """The token cap of one request (`what`: how they were counted, e.g. " (in windows)")."""
        cap = self.settings.max_tokens_per_request
        if tokens > cap:
            raise APIError(ErrorKind.TOO_MANY_TOKENS, f"Requested {tokens} tokens{what}, max {cap} tokens per request.",
                           param=param)

    def check_lengths(self, entries: list[CacheEntry], refuse_truncated: bool, too_long: Callable[[int], str],
                      param: str) -> int:
        """Truncated inputs (when refused: 400 `context_length_exceeded`) and the token cap; the token count."""
        if refuse_truncated:
            for i, e in enumerate(entries):
                if e.truncated:
                    raise APIError(ErrorKind.CONTEXT_LENGTH, too_long(i), param=param)
        tokens = int(sum(e.tokens for e in entries))
        self.check_tokens(tokens, param)
        return tokens

    async def call(self, info: Info, call: Awaitable[T]) -> T:
        """Await one backend (or batcher) call; a failure becomes the client's error, counted by kind."""
        try:
            return await call
        except (BackendError, DeadlineExceeded) as e:
            raise self._failure(info, e) from None

    async def shared(self, call: Awaitable[T]) -> T:
        """Await a lookup; a shared computation its owner abandoned is the client's 503 (not counted)."""
        try:
            return await call
        except SharedCallCancelled as e:
            raise client_error(e, "", None) from None

    def _failure(self, info: Info, e: Exception) -> Exception:
        kind = getattr(e, "kind", "error")
        if info.backend == LOCAL:
            self.metrics.triton_errors.labels(kind).inc()
        else:
            self.metrics.upstream_errors.labels(info.backend, kind).inc()
        if kind not in ("rejected", "error"):  # an unlisted BackendError is logged by the 500 handler
            log.warning("%s %s: %s", "Triton" if info.backend == LOCAL else f"upstream {info.backend}", kind, e)
        return client_error(e, _server(info), self.settings.request_timeout_s) or e
