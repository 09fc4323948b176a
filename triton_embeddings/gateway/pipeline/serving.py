"""One serving template for every task (embeddings, rerank): check the domain inputs, admit, look the rows
up (cache, single-flight, batcher, backend), check lengths and the token cap, count, build the result.

A task subclasses `Serving` with its inputs, its rows and the backend call for a batch of them; the HTTP
room converts wire requests to the task's inputs and its results to wire answers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import ClassVar, Generic, TypeVar

import numpy as np

from triton_embeddings.gateway.backends.base import Backend, ModelInfo, RerankModelInfo
from triton_embeddings.gateway.metrics import GatewayMetrics
from triton_embeddings.gateway.pipeline.admission import Admission
from triton_embeddings.gateway.pipeline.batcher import BatchCall, Batcher
from triton_embeddings.gateway.pipeline.cache import Cache, CacheEntry
from triton_embeddings.gateway.pipeline.lookup import SharedLookup
from triton_embeddings.gateway.settings import Settings

In = TypeVar("In")
Out = TypeVar("Out")


def make_batcher(settings: Settings, metrics: GatewayMetrics) -> Batcher:
    """The batcher every task shares; it times each Triton call (upstream calls are timed by their backend)."""
    upstream_models = set(settings.upstreams)

    def observe(model: str, seconds: float) -> None:
        if model not in upstream_models:  # upstream calls: gateway_upstream_request_duration_seconds
            metrics.triton_latency.labels(model).observe(seconds)

    return Batcher(settings.max_concurrent_batches, settings.request_timeout_s, observe)


def entries_of(vectors: Iterable, token_counts: np.ndarray, truncated: np.ndarray) -> list[CacheEntry]:
    """A backend result as one entry per row."""
    return [CacheEntry(np.asarray(v, dtype=np.float32).copy(), int(n), bool(t))
            for v, n, t in zip(vectors, token_counts, truncated, strict=True)]


class Serving(Generic[In, Out]):
    """The template; subclasses fill in `check`, `entries`, `refuses_truncated`, `too_long` and `result`."""

    kind: ClassVar[str]
    batch_call: ClassVar[Callable[[Backend], BatchCall]]  # the backend call for one batch of this task's rows

    def __init__(self, settings: Settings, backend: Backend, batcher: Batcher, cache: Cache,
                 metrics: GatewayMetrics):
        self.settings = settings
        self.backend = backend
        self.batcher = batcher
        self.cache = cache
        self.metrics = metrics
        self.admission = Admission(settings, metrics)
        self.lookup = SharedLookup(cache, metrics)
        self.call = self.batch_call(backend)

    async def serve(self, info: ModelInfo | RerankModelInfo, inputs: In, request_id: str = "") -> Out:
        """Answer one request of this task for the resolved model `info`."""
        self.check(info, inputs)
        with self.admission.gate():
            entries = await self.admission.shared(self.entries(info, inputs, request_id))
        tokens = self.admission.check_lengths(entries, self.refuses_truncated(inputs),
                                              lambda i: self.too_long(info, i), self.param(inputs))
        self.metrics.inputs.labels(info.name, info.kind).observe(len(entries))
        self.metrics.tokens.labels(info.name, info.kind, info.backend).inc(tokens)
        return self.result(entries, tokens)

    # ---- the task's parts ------------------------------------------------------------------------------

    def check(self, info, inputs: In) -> None:
        """Refuse inputs this task cannot serve (limits, invalid text): 400 naming the parameter."""
        raise NotImplementedError

    async def entries(self, info, inputs: In, request_id: str) -> list[CacheEntry]:
        """One entry per input, from the cache or computed."""
        raise NotImplementedError

    def param(self, inputs: In) -> str:
        """The request parameter a length error names."""
        raise NotImplementedError

    def refuses_truncated(self, inputs: In) -> bool:
        raise NotImplementedError

    def too_long(self, info, index: int) -> str:
        """The message of a refused over-long input."""
        raise NotImplementedError

    def result(self, entries: list[CacheEntry], tokens: int) -> Out:
        raise NotImplementedError

