"""Per-model dispatch to the backend: length-sorted chunks of at most max_batch_size, a bounded number in flight.

Rows are opaque here: a task (pipeline/embeddings.py, pipeline/rerank.py) hands in its rows with their
lengths and the call that runs one batch of them (texts with their per-row inputs, or (query, document)
pairs), so a new per-row input never touches the batcher. A request's items
are queued sorted by length and cut into chunks the ensemble accepts. At most
`max_calls` Triton calls per model run at once; texts that arrive meanwhile (from any request) wait and
leave together in the next call. An idle gateway sends at once (no added latency); a busy one sends fewer,
fuller batches, which is cheaper for Triton than many single-text calls.

Each call to Triton carries at most an even share of the items outstanding (queued and in flight) over
`max_calls`, but at least `MIN_SHARE`; upstream APIs get full calls. One Triton request runs on one model
instance, so a call holding most of the work would leave the other instances idle while its clients wait
(32 single-text clients: one call of ~27 texts beside calls of 1); below `MIN_SHARE` the per-call overhead
outweighs spreading.

Online rows go first: a row carries the priority of the request that queued it (`row_priority`, ONLINE unless
the batch runner set BATCH for its lines). While online rows wait, a call is sized for them alone (the even
share above, of the online rows) and filled with them first; batch rows fill what is left, so they never make
an online call longer. With no online row waiting, batch rows take whole calls. So that batch work is never
starved, once `PASSED_OVER_MAX` calls in a row have left out waiting batch rows, the next call takes batch rows
first. While online traffic is on (an online row submitted within `ONLINE_QUIET_S`), batch rows use only a
trickle: they are sent only while they have credit, which every call earns at `BATCH_SHARE` of the characters of
its online rows and batch rows spend; a call takes at most `MIN_SHARE` of them, and a call of batch rows alone
waits until no other one runs. A steady online load so gives batch work about `BATCH_SHARE` of Triton's work,
whatever the lengths; once online traffic stops, batch rows take whole calls again.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from triton_embeddings.gateway.backends.base import LOCAL, ModelInfo, RerankModelInfo
from triton_embeddings.gateway.errors import DeadlineExceeded

MIN_SHARE = 4
ONLINE, BATCH = 0, 1
PASSED_OVER_MAX = 8  # calls in a row that may leave waiting batch rows out before one takes them first
ONLINE_QUIET_S = 0.25  # online traffic counts as on this long after its last row was submitted
BATCH_SHARE = 0.1  # beside online traffic, batch rows get this share of the characters online rows are sent with
row_priority: contextvars.ContextVar[int] = contextvars.ContextVar("row_priority", default=ONLINE)

log = logging.getLogger("gateway.batcher")

# One backend call for a batch of rows of one model: (model, rows, request id) -> one result per row.
BatchCall = Callable[[Any, list, str], Awaitable[Sequence]]


class _Item:
    __slots__ = ("row", "length", "future", "request_id", "call", "priority")

    def __init__(self, row: object, length: int, future: asyncio.Future, request_id: str, call: BatchCall,
                 priority: int = ONLINE):
        self.row = row
        self.length = length
        self.future = future
        self.request_id = request_id
        self.call = call
        self.priority = priority


class _Queue:
    """A model's waiting rows, one lane per priority: online rows first, batch rows in what is left."""

    def __init__(self):
        self.lanes: tuple[deque[_Item], deque[_Item]] = (deque(), deque())
        self.passed_over = 0  # calls in a row that left waiting batch rows out

    def __len__(self) -> int:
        return len(self.lanes[ONLINE]) + len(self.lanes[BATCH])

    def sizing(self) -> int:
        """The rows the next call is sized for: the online rows when any wait, else the batch rows."""
        return len(self.lanes[ONLINE]) or len(self.lanes[BATCH])

    def take(self, size: int, batch_room: int) -> list[_Item]:
        """The rows of the next call, at most `size`, of them at most `batch_room` batch rows; rows of requests
        that went away are dropped."""
        online, batch = self.lanes
        order = (batch, online) if self.passed_over >= PASSED_OVER_MAX else (online, batch)
        out: list[_Item] = []
        took_batch = 0
        for lane in order:
            while lane and len(out) < size and (lane is online or took_batch < batch_room):
                item = lane.popleft()
                if not item.future.done():
                    out.append(item)
                    took_batch += lane is batch
        self.passed_over = 0 if took_batch or not batch else self.passed_over + 1
        return out


class Batcher:
    """Queues rows per model and runs them through their task's call in bounded, concurrent batches."""

    def __init__(
        self,
        max_calls: int,
        deadline_s: float | None = None,
        observe_call: Callable[[str, float], None] = lambda model, seconds: None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.max_calls = max_calls
        self.deadline_s = deadline_s
        self.observe_call = observe_call
        self.clock = clock
        self._queues: dict[str, _Queue] = {}
        self._calls: dict[str, int] = {}
        self._in_flight: dict[str, int] = {}  # items in calls now running, per model
        self._batch_calls: dict[str, int] = {}  # calls now running that hold batch rows, per model
        self._online_at: dict[str, float] = {}  # when an online row was last submitted, per model
        self._credit: dict[str, float] = {}  # characters batch rows may still use beside online traffic
        self._wakes: dict[str, asyncio.TimerHandle] = {}  # a pump once online traffic will have gone quiet
        self._tasks: set[asyncio.Task] = set()

    async def submit(self, info: ModelInfo | RerankModelInfo, rows: list, lengths: list[int], call: BatchCall,
                     request_id: str = "") -> list:
        """Run `rows` (any number) through `call` in batches, at the priority `row_priority` holds; one result per
        row, in order."""
        loop = asyncio.get_running_loop()
        queue = self._queues.setdefault(info.name, _Queue())
        priority = row_priority.get()
        if priority == ONLINE:
            self._online_at[info.name] = self.clock()
        items = [_Item(r, n, loop.create_future(), request_id, call, priority)
                 for r, n in zip(rows, lengths, strict=True)]
        futures = [it.future for it in items]
        queue.lanes[priority].extend(sorted(items, key=lambda it: it.length))
        self._pump(info)
        # Wait for all (so no failure goes unretrieved); the first failure is this request's answer.
        try:
            results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), self.deadline_s)
        except asyncio.TimeoutError:  # still queued rows are dropped: their futures were cancelled
            raise DeadlineExceeded(f"request not answered within {self.deadline_s:g} s") from None
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return results

    def _pump(self, info: ModelInfo | RerankModelInfo) -> None:
        queue = self._queues[info.name]
        while queue and self._calls.get(info.name, 0) < self.max_calls:
            size = min(info.max_batch_size, self._share(info, queue.sizing()))
            online_on = self._online_on(info.name)
            batch = queue.take(size, self._batch_room(info.name, queue) if online_on else size)
            if not batch:
                self._wake_when_quiet(info)
                return
            if online_on:
                self._spend(info.name, batch, queue)
            if any(it.priority == BATCH for it in batch):
                self._batch_calls[info.name] = self._batch_calls.get(info.name, 0) + 1
            self._calls[info.name] = self._calls.get(info.name, 0) + 1
            self._in_flight[info.name] = self._in_flight.get(info.name, 0) + len(batch)
            task = asyncio.create_task(self._run(info, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _online_on(self, model: str) -> bool:
        return self.clock() - self._online_at.get(model, float("-inf")) < ONLINE_QUIET_S

    def _batch_room(self, model: str, queue: _Queue) -> int:
        """Batch rows the next call may take beside online traffic: none without credit, none for a call of
        batch rows alone while another one runs, else at most MIN_SHARE."""
        alone = not queue.lanes[ONLINE]
        if self._credit.get(model, 0.0) <= 0 or (alone and self._batch_calls.get(model, 0)):
            return 0
        return MIN_SHARE

    def _spend(self, model: str, batch: list[_Item], queue: _Queue) -> None:
        """The call's online rows earn batch credit, its batch rows spend it; no credit piles up unused."""
        earned = sum(BATCH_SHARE * it.length if it.priority == ONLINE else -it.length for it in batch)
        credit = self._credit.get(model, 0.0) + earned
        self._credit[model] = credit if queue.lanes[BATCH] else min(credit, 0.0)

    def _wake_when_quiet(self, info: ModelInfo | RerankModelInfo) -> None:
        """Batch rows held back for online traffic: pump again once it will have gone quiet (if nothing else
        does first), so they never wait on a request that does not come."""
        if not self._queues[info.name].lanes[BATCH] or not self._online_on(info.name):
            return
        if (pending := self._wakes.get(info.name)) is not None:
            pending.cancel()
        delay = self._online_at[info.name] + ONLINE_QUIET_S - self.clock()
        self._wakes[info.name] = asyncio.get_running_loop().call_later(max(delay, 0.0) + 0.001, self._pump, info)

    def _share(self, info: ModelInfo | RerankModelInfo, queued: int) -> int:
        """Items for the next call to Triton: an even share of those outstanding over `max_calls`, at least
        MIN_SHARE. An upstream API gets full calls: it has no instances to spread over, and counts requests."""
        if info.backend != LOCAL:
            return info.max_batch_size
        return max(MIN_SHARE, -(-(queued + self._in_flight.get(info.name, 0)) // self.max_calls))

    async def _run(self, info: ModelInfo | RerankModelInfo, batch: list[_Item]) -> None:
        batch.sort(key=lambda it: it.length)
        t0 = time.perf_counter()
        try:
            entries = await batch[0].call(info, [it.row for it in batch], batch[0].request_id)
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
            if any(it.priority == BATCH for it in batch):
                self._batch_calls[info.name] -= 1
            self._pump(info)
