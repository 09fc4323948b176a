"""Per-model dispatch to Triton: length-sorted chunks of at most max_batch_size, a bounded number in flight.

Texts (embedding models) and (query, document) pairs (rerank models) go the same way. A request's items
are queued sorted by length and cut into chunks the ensemble accepts. At most
`max_calls` Triton calls per model run at once; texts that arrive meanwhile (from any request) wait and
leave together in the next call. An idle gateway sends at once (no added latency); a busy one sends fewer,
fuller batches, which is cheaper for Triton than many single-text calls.

Each call to Triton carries at most an even share of the items outstanding (queued and in flight) over
`max_calls`, but at least `MIN_SHARE`; upstream APIs get full calls. One Triton request runs on one model
instance, so a call holding most of the work would leave the other instances idle while its clients wait
(32 single-text clients: one call of ~27 texts beside calls of 1); below `MIN_SHARE` the per-call overhead
outweighs spreading.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from triton_embeddings import contract
from triton_embeddings.gateway.backend import LOCAL, Backend, ModelInfo, RerankModelInfo
from triton_embeddings.gateway.cache import CacheEntry

Pair = tuple[str, str]
MIN_SHARE = 4

log = logging.getLogger("gateway.batcher")


class DeadlineExceeded(Exception):
    """The whole request was not embedded within its deadline (queueing included); not a backend error."""


class _Item:
    __slots__ = ("payload", "length", "future", "request_id", "prompt_name", "side")

    def __init__(self, payload: str | Pair, future: asyncio.Future, request_id: str, prompt_name: str = "",
                 side: str = ""):
        self.payload = payload
        self.length = len(payload) if isinstance(payload, str) else len(payload[0]) + len(payload[1])
        self.future = future
        self.request_id = request_id
        self.prompt_name = prompt_name  # per-row PROMPT_NAME ("" = default)
        self.side = side  # per-row TRUNCATE ("" = END)


def _row_options(batch: list[_Item]) -> dict[str, list[str]] | None:
    """The optional per-row inputs of a batch; None when every row uses the defaults (plain requests)."""
    options = {}
    if any(it.prompt_name for it in batch):
        options[contract.PROMPT_NAME] = [it.prompt_name for it in batch]
    if any(it.side for it in batch):
        options[contract.TRUNCATE] = [it.side or "END" for it in batch]
    return options or None


class Batcher:
    """Queues texts per model and runs them through `backend.embed` in bounded, concurrent batches."""

    def __init__(
        self,
        backend: Backend,
        max_calls: int,
        deadline_s: float | None = None,
        observe_call: Callable[[str, float], None] = lambda model, seconds: None,
    ):
        self.backend = backend
        self.max_calls = max_calls
        self.deadline_s = deadline_s
        self.observe_call = observe_call
        self._queues: dict[str, deque[_Item]] = {}
        self._calls: dict[str, int] = {}
        self._in_flight: dict[str, int] = {}  # items in calls now running, per model
        self._tasks: set[asyncio.Task] = set()

    async def embed(
        self, info: ModelInfo, texts: list[str], request_id: str = "", prompt_name: str = "", side: str = ""
    ) -> list[CacheEntry]:
        """Embed `texts` (any number) with one prompt name and truncation side; one entry per text, in order."""
        return await self._submit(info, texts, request_id, prompt_name, side)

    async def rerank(self, info: RerankModelInfo, pairs: list[Pair], request_id: str = "") -> list[CacheEntry]:
        """Score (query, document) `pairs` (any number); one entry per pair, in order, its vector [score, logit]."""
        return await self._submit(info, pairs, request_id)

    async def _submit(self, info, payloads: list, request_id: str, prompt_name: str = "",
                      side: str = "") -> list[CacheEntry]:
        loop = asyncio.get_running_loop()
        queue = self._queues.setdefault(info.name, deque())
        items = [_Item(p, loop.create_future(), request_id, prompt_name, side) for p in payloads]
        futures = [it.future for it in items]
        queue.extend(sorted(items, key=lambda it: it.length))
        self._pump(info)
        # Wait for all (so no failure goes unretrieved); the first failure is this request's answer.
        try:
            results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), self.deadline_s)
        except asyncio.TimeoutError:  # still queued texts are dropped: their futures were cancelled
            raise DeadlineExceeded(f"request not embedded within {self.deadline_s:g} s") from None
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return results

    def _pump(self, info: ModelInfo | RerankModelInfo) -> None:
        queue = self._queues[info.name]
        while queue and self._calls.get(info.name, 0) < self.max_calls:
            batch: list[_Item] = []
            size = min(info.max_batch_size, self._share(info, len(queue)))
            while queue and len(batch) < size:
                item = queue.popleft()
                if not item.future.done():  # skip texts of requests that went away
                    batch.append(item)
            if not batch:
                return
            self._calls[info.name] = self._calls.get(info.name, 0) + 1
            self._in_flight[info.name] = self._in_flight.get(info.name, 0) + len(batch)
            task = asyncio.create_task(self._run(info, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _share(self, info: ModelInfo | RerankModelInfo, queued: int) -> int:
        """Items for the next call to Triton: an even share of those outstanding over `max_calls`, at least
        MIN_SHARE. An upstream API gets full calls: it has no instances to spread over, and counts requests."""
        if info.backend != LOCAL:
            return info.max_batch_size
        return max(MIN_SHARE, -(-(queued + self._in_flight.get(info.name, 0)) // self.max_calls))

    async def _call(self, info, batch: list[_Item]) -> list[CacheEntry]:
        """One backend call for a batch; one entry per item."""
        payloads, request_id = [it.payload for it in batch], batch[0].request_id
        if info.kind == "rerank":
            res = await self.backend.rerank(info.name, [q for q, _ in payloads], [d for _, d in payloads], request_id)
            vectors = list(zip(res.scores, res.logits))
        else:
            options = _row_options(batch)  # plain requests send no optional inputs
            if options:
                res = await self.backend.embed(info.name, payloads, request_id, options)
            else:
                res = await self.backend.embed(info.name, payloads, request_id)
            vectors = list(res.embeddings)
        return [
            CacheEntry(np.asarray(v, dtype=np.float32).copy(), int(n), bool(t))
            for v, n, t in zip(vectors, res.token_counts, res.truncated, strict=True)
        ]

    async def _run(self, info: ModelInfo | RerankModelInfo, batch: list[_Item]) -> None:
        batch.sort(key=lambda it: it.length)
        t0 = time.perf_counter()
        try:
            entries = await self._call(info, batch)
        except Exception as e:
            for it in batch:
                if not it.future.done():
                    it.future.set_exception(e)
        else:
            for it, entry in zip(batch, entries):
                if not it.future.done():
                    it.future.set_result(entry)
        finally:
            self.observe_call(info.name, time.perf_counter() - t0)
            self._calls[info.name] -= 1
            self._in_flight[info.name] -= len(batch)
            self._pump(info)
