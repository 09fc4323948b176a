"""The embeddings work: inputs, limits, cache, the batcher, and the OpenAI answer."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import TypeVar

import numpy as np

from triton_embeddings.gateway import retrieval
from triton_embeddings.gateway.backend import (
    LOCAL,
    Backend,
    ModelInfo,
    RerankModelInfo,
    TritonError,
    TritonTimeout,
    TritonUnavailable,
)
from triton_embeddings.gateway.batcher import Batcher, DeadlineExceeded
from triton_embeddings.gateway.cache import Cache, CacheEntry, cache_key
from triton_embeddings.gateway.errors import APIError, ErrorKind
from triton_embeddings.gateway.lookup import SharedLookup
from triton_embeddings.gateway.metrics import GatewayMetrics
from triton_embeddings.gateway.protocol import EmbeddingRequest, EmbeddingResponse, embedding_response
from triton_embeddings.gateway.settings import Settings
from triton_embeddings.gateway.token_ids import TokenDecoder

log = logging.getLogger("gateway.service")
T = TypeVar("T")


class EmbeddingService:
    """Answers embeddings requests for a resolved model (the registry resolves names)."""

    def __init__(
        self,
        settings: Settings,
        backend: Backend,
        cache: Cache,
        metrics: GatewayMetrics,
        decoder: TokenDecoder,
    ):
        self.settings = settings
        self.backend = backend
        self.cache = cache
        self.metrics = metrics
        self.decoder = decoder
        self.batcher = Batcher(
            backend,
            settings.max_concurrent_batches,
            settings.request_timeout_s,
            self._observe_call,
        )
        self._upstream_models = set(settings.upstreams)
        self._in_flight = 0
        self._lookup = SharedLookup(cache, metrics)

    def _observe_call(self, model: str, seconds: float) -> None:
        if model not in self._upstream_models:  # upstream calls: gateway_upstream_request_duration_seconds
            self.metrics.triton_latency.labels(model).observe(seconds)

    # ---- embeddings ---------------------------------------------------------------------------------

    def texts_of(self, req: EmbeddingRequest) -> list[str]:
        """The request's inputs as texts; token ids are decoded as cl100k_base."""
        raw = req.input
        if isinstance(raw, str):
            items: list = [raw]
        elif raw and isinstance(raw[0], int):
            items = [raw]  # one token-id input
        else:
            items = list(raw)
        if not items:
            raise APIError(ErrorKind.INVALID_REQUEST, "'input' must not be an empty array.", param="input")
        if len(items) > self.settings.max_inputs:
            raise APIError(
                ErrorKind.INVALID_REQUEST,
                f"Too many inputs: {len(items)}. At most {self.settings.max_inputs} inputs per request.",
                param="input",
            )
        texts = []
        for i, item in enumerate(items):
            if not item:
                raise APIError(
                    ErrorKind.INVALID_REQUEST, f"Input {i} is empty; inputs must be non-empty.", param="input"
                )
            text = item if isinstance(item, str) else self.decoder.decode(item, i)
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise APIError(
                    ErrorKind.INVALID_REQUEST,
                    f"Input {i} is not valid Unicode (unpaired surrogate).",
                    param="input",
                ) from None
            texts.append(text)
        return texts

    def _check_dimensions(self, dims: int | None, info: ModelInfo) -> None:
        upper = info.dimension or dims or 1  # 0: an upstream model of unconfigured length (checked there)
        if dims is not None and not 1 <= dims <= upper:
            raise APIError(
                ErrorKind.INVALID_REQUEST,
                f"'dimensions' must be between 1 and {info.dimension} for model {info.name}; got {dims}.",
                param="dimensions",
            )

    async def embed(self, req: EmbeddingRequest, info: ModelInfo, request_id: str = "") -> EmbeddingResponse:
        """Answer one embeddings request for the resolved model `info`, in OpenAI's shape."""
        texts = self.texts_of(req)
        self._check_dimensions(req.dimensions, info)
        opts = retrieval.options_of(req, info, self.settings)
        if self._in_flight >= self.settings.max_in_flight:
            raise APIError(ErrorKind.OVERLOADED, "The server is overloaded; retry shortly.")
        if self.settings.log_inputs and log.isEnabledFor(logging.DEBUG):
            log.debug("inputs: %r", texts)
        self._in_flight += 1
        self.metrics.in_flight.inc()
        try:
            if opts.chunk:
                entries = await self._chunked(info, texts, opts, request_id)
            else:
                entries = await self._entries(info, texts, opts, request_id)
        finally:
            self._in_flight -= 1
            self.metrics.in_flight.dec()
        tokens = self._check_lengths(info, entries, opts)
        self.metrics.inputs.labels(info.name, info.kind).observe(len(texts))
        self.metrics.tokens.labels(info.name, info.kind, info.backend).inc(tokens)
        # float32 rows (orjson writes the shortest float32 repr), integer rows, or base64 strings
        return embedding_response(req.model, retrieval.encode_vectors(np.stack([e.vector for e in entries]), req, info),
                                  tokens)

    def _check_lengths(self, info: ModelInfo, entries: list[CacheEntry], opts: retrieval.Options) -> int:
        """Truncated inputs (truncate NONE) and the token cap; returns the request's token count."""
        if opts.truncate == "NONE":
            for i, e in enumerate(entries):
                if e.truncated:
                    raise APIError(
                        ErrorKind.CONTEXT_LENGTH,
                        f"This model's maximum context length is {info.max_seq_length} tokens; input {i} is "
                        "longer. Please reduce the length of the input, or send truncate END or START.",
                        param="input",
                    )
        tokens = int(sum(e.tokens for e in entries))
        if tokens > self.settings.max_tokens_per_request:
            raise APIError(
                ErrorKind.TOO_MANY_TOKENS,
                f"Requested {tokens} tokens, max {self.settings.max_tokens_per_request} tokens per request.",
                param="input",
            )
        return tokens

    async def _chunked(
        self, info: ModelInfo, texts: list[str], opts: retrieval.Options, request_id: str
    ) -> list[CacheEntry]:
        """Inputs over the max length as overlapping windows (cut by the tokenizer step), embedded like any
        text, then combined by a token-weighted mean; usage counts every window's tokens."""
        names = [opts.prompt_name] * len(texts) if opts.prompt_name else None
        spans = await upstream(info, self.backend.windows(info.name, texts, names, request_id), self.metrics,
                               self.settings)
        planned = sum(k for rows in spans for _, _, k in rows)
        if planned > self.settings.max_tokens_per_request:
            raise APIError(
                ErrorKind.TOO_MANY_TOKENS,
                f"Requested {planned} tokens (in windows), max {self.settings.max_tokens_per_request} tokens "
                "per request.",
                param="input",
            )
        pieces = [[t] if len(rows) <= 1 else [t[a:b] for a, b, _ in rows] for t, rows in zip(texts, spans)]
        flat = await self._entries(info, [p for ps in pieces for p in ps], opts, request_id)
        out, at = [], 0
        for ps in pieces:
            group, at = flat[at : at + len(ps)], at + len(ps)
            if len(group) == 1:
                out.append(group[0])
                continue
            tokens = np.array([e.tokens for e in group])
            vector = retrieval.combine_windows(np.stack([e.vector for e in group]), tokens, info.normalize)
            out.append(CacheEntry(vector, int(tokens.sum()), False))
        return out

    async def _entries(
        self, info: ModelInfo, texts: list[str], opts: retrieval.Options, request_id: str
    ) -> list[CacheEntry]:
        """One entry per input: cached ones from the cache, the missing unique texts from Triton, once per
        (model, options, text) however many requests miss it at the same time."""
        prefix = retrieval.cache_prefix(opts, info)  # prompt and side; "" for plain requests
        return await self._lookup.entries(
            texts,
            lambda t: cache_key(info.name, info.fingerprint, prefix + t),
            lambda t: (info.name, info.fingerprint, prefix + t),
            lambda missing: self._infer(info, missing, opts, request_id),
        )

    async def embed_uncached(self, info: ModelInfo, texts: list[str]) -> None:
        """The backend path alone, cache bypassed (shadow copies measure the work, not the cache)."""
        await self._infer(info, texts, retrieval.Options(), "")

    async def _infer(
        self, info: ModelInfo, texts: list[str], opts: retrieval.Options, request_id: str
    ) -> dict[str, CacheEntry]:
        """Embed through the batcher (length-sorted, chunked, concurrent); failures become 503/504/500."""
        call = self.batcher.embed(info, texts, request_id, opts.prompt_name, opts.side)
        entries = await upstream(info, call, self.metrics, self.settings)
        if info.backend != LOCAL:
            self.metrics.upstream_tokens.labels(info.backend, info.name).inc(sum(e.tokens for e in entries))
        return dict(zip(texts, entries, strict=True))


async def upstream(info: ModelInfo | RerankModelInfo, call: Awaitable[T], metrics: GatewayMetrics,
                   settings: Settings) -> T:
    """Await a batcher call (embeddings or rerank); backend failures become the client's error."""
    try:
        return await call
    except (TritonError, DeadlineExceeded, APIError) as e:
        raise _failure(info, e, metrics, settings) from None


def _failure(info: ModelInfo | RerankModelInfo, e: Exception, metrics: GatewayMetrics,
             settings: Settings) -> Exception:
    """The client's error for a backend failure, counted by kind (Triton's, or the upstream's)."""
    kind = e.kind if isinstance(e, TritonError) else "deadline" if isinstance(e, DeadlineExceeded) else "rejected"
    local = info.backend == LOCAL
    if local:
        metrics.triton_errors.labels(kind).inc()
    else:
        metrics.upstream_errors.labels(info.backend, kind).inc()
    server = "The inference server" if local else "The upstream API for this model"
    if kind not in ("rejected", "error"):  # a TritonError is logged by the 500 handler
        log.warning("%s %s: %s", "Triton" if local else f"upstream {info.backend}", kind, e)
    if isinstance(e, TritonUnavailable):  # a crashed worker (stub_unhealthy) too: it is being reloaded
        return APIError(ErrorKind.UPSTREAM_UNAVAILABLE, f"{server} is not reachable right now; retry shortly.")
    if isinstance(e, TritonTimeout):
        return APIError(ErrorKind.UPSTREAM_TIMEOUT, f"{server} did not answer in time.")
    if isinstance(e, DeadlineExceeded):
        return APIError(
            ErrorKind.REQUEST_TIMEOUT,
            f"The request was not answered within {settings.request_timeout_s:g} s; retry shortly.",
        )
    return e  # a 400 from the upstream as it is; a TritonError: the generic 500 handler logs it
