"""The batch runner, one per gateway: it takes a job's lease in the store, runs the job's lines in small
chunks through the pipeline when online traffic leaves room (its rows ranked below online rows in the batcher),
and writes its output files: references to its stored lines, which the content route streams.

Exactly once: a line's output is written under its index, once (the first write wins); a job resumes from
the lines written. Exactly one runner holds a job: its lease, renewed every third of its life; a runner that
cannot renew it stops the job, which another runner takes over once the lease has expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from triton_embeddings.gateway.batch import jsonl
from triton_embeddings.gateway.batch.execute import Outcome, output_line, run_line, unrun_line
from triton_embeddings.gateway.batch.protocol import derived_id, file_object, moved, new_id
from triton_embeddings.gateway.batch.store import ACTIVE, FAILED, OK, TERMINAL, BatchStore
from triton_embeddings.gateway.errors import StoreUnavailable
from triton_embeddings.gateway.http.middleware import request_id_var
from triton_embeddings.gateway.metrics import GatewayMetrics
from triton_embeddings.gateway.pipeline.batcher import BATCH, row_priority
from triton_embeddings.gateway.settings import Settings

log = logging.getLogger("gateway.batch")
STATUSES = ACTIVE + TERMINAL
STATUS_CHECK_S = 0.5  # how often a running job's status is read again (a cancel, the window)
UNRUN_PAGE = 1000  # unrun lines written at a time when a job is cancelled or expires
UNRUN = {"cancelled": ("batch_cancelled", "The batch was cancelled before this request ran."),
         "expired": ("batch_expired", "The batch expired before this request ran.")}


def _if_status(statuses: tuple[str, ...], status: str, **fields):
    """A store change: move the job to `status` if it is in one of `statuses`."""
    return lambda b: moved(b, status, **fields) if b["status"] in statuses else None


class Runner:
    """Polls the store for unfinished jobs and runs one at a time."""

    def __init__(self, state, store: BatchStore, settings: Settings, metrics: GatewayMetrics):
        self.state = state  # app.state: registry, decoder, embeddings, rerank
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.id = new_id("runner")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        log.info("batch runner %s on the %s store", self.id, self.store.name)
        self._task = asyncio.create_task(self._loop(), name="batch-runner")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            try:
                ran = await self._poll()
            except StoreUnavailable as e:
                log.warning("batch store unavailable: %s", e)
                ran = False
            except Exception:
                log.exception("batch runner error")
                ran = False
            if not ran:
                await asyncio.sleep(self.settings.batch_poll_s)

    async def _poll(self) -> bool:
        """Run the first unfinished job whose lease this runner gets; whether it ran one."""
        active = await self.store.active_batches()
        await self._gauges(active)
        for batch_id in active:
            if await self.store.acquire(batch_id, self.id, self.settings.batch_lease_s):
                await self._hold(batch_id)
                return True
        return False

    async def _gauges(self, active: list[str]) -> None:
        counts = await self.store.status_counts()
        for status in STATUSES:
            self.metrics.batch_jobs.labels(status).set(counts.get(status, 0))
        queue = 0
        for batch_id in active:
            got = await self.store.get_batch(batch_id)
            if got is not None:
                c = got[0]["request_counts"]
                queue += c["total"] - c["completed"] - c["failed"]
        self.metrics.batch_queue.set(queue)

    async def _hold(self, batch_id: str) -> None:
        """Run the job while renewing its lease; stop it when the lease is lost."""
        job = asyncio.create_task(Job(self, batch_id).run(), name=f"batch-{batch_id}")
        try:
            while True:
                done, _ = await asyncio.wait({job}, timeout=self.settings.batch_lease_s / 3)
                if done:
                    return job.result()
                if not await self.store.acquire(batch_id, self.id, self.settings.batch_lease_s):
                    log.warning("lost the lease on %s; another runner goes on with it", batch_id)
                    return None
        finally:
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job
            with contextlib.suppress(Exception):
                await self.store.release(batch_id, self.id)

    def online_in_flight(self) -> int:
        return self.state.embeddings.admission.in_flight + self.state.rerank.admission.in_flight

    async def wait_for_room(self) -> None:
        """Online requests first: wait while they are in flight, at most `batch_max_wait_s`."""
        deadline = time.monotonic() + self.settings.batch_max_wait_s
        while self.online_in_flight() >= self.settings.batch_yield_in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.005)


class Job:
    """One job under this runner's lease, from wherever it stands to its end."""

    def __init__(self, runner: Runner, batch_id: str):
        self.runner = runner
        self.store = runner.store
        self.id = batch_id

    async def run(self) -> None:
        batch = await self._update(_if_status(("validating",), "in_progress"))
        if batch["status"] == "in_progress":
            if await self._lines(await self._requests(batch)):
                batch = await self._update(_if_status(("in_progress",), "finalizing"))
            else:
                batch = (await self.store.get_batch(self.id))[0]
        if batch["status"] in ("finalizing", "cancelling") or self._past_window(batch):
            await self._finish(batch)

    async def _update(self, change) -> dict:
        """Apply a change; the job's record as it stands after it (changed or not)."""
        new = await self.store.update_batch(self.id, change)
        if new is None:
            got = await self.store.get_batch(self.id)
            new = got[0]
        return new

    def _past_window(self, batch: dict) -> bool:
        return batch["status"] == "in_progress" and time.time() >= batch["expires_at"]

    async def _requests(self, batch: dict) -> list[jsonl.Request]:
        content = await self.store.file_content(batch["input_file_id"])
        return jsonl.parse(content or b"", max_requests=len(content or b"") + 1)  # checked when created

    async def _lines(self, requests: list[jsonl.Request]) -> bool:
        """Run the lines not written yet, a chunk at a time; False when the job was cancelled or ran past its
        window first."""
        done = await self.store.done_indices(self.id)
        pending = [r for r in requests if r.index not in done]
        size, checked = self.runner.settings.batch_chunk_lines, 0.0
        for at in range(0, len(pending), size):
            if time.monotonic() - checked > STATUS_CHECK_S:
                batch, checked = (await self.store.get_batch(self.id))[0], time.monotonic()
                if batch["status"] != "in_progress" or self._past_window(batch):
                    return False
            await self.runner.wait_for_room()
            await asyncio.gather(*(self._line(r) for r in pending[at : at + size]))
        return True

    async def _line(self, request: jsonl.Request) -> None:
        rid = f"{self.id}:{request.index}"
        request_id_var.set(rid)  # this task's log lines carry the line's request id
        row_priority.set(BATCH)  # the batcher ranks this line's rows below online rows
        outcome = await self._attempts(request, rid)
        body = output_line(derived_id("batch_req", self.id, request.index), request, rid, outcome)
        failed = outcome.status != 200
        if await self.store.put_line(self.id, request.index, FAILED if failed else OK, body):
            m = self.runner.metrics
            m.batch_lines.labels("failed" if failed else "completed").inc()
            if outcome.tokens:
                m.batch_tokens.labels(outcome.model).inc(outcome.tokens)
            m.batch_progress.set(time.time())

    async def _attempts(self, request: jsonl.Request, rid: str) -> Outcome:
        """A line answered 429/503/504 is tried again (backing off) before its error is kept."""
        for attempt in range(self.runner.settings.batch_retries + 1):
            outcome = await run_line(self.runner.state, request, rid)
            if not outcome.retry or attempt == self.runner.settings.batch_retries:
                return outcome
            await asyncio.sleep(min(0.5 * 2**attempt, 10.0))
        raise AssertionError("unreachable")

    async def _finish(self, batch: dict) -> None:
        """Write the lines never run (cancelled, expired), the output and error files (ids derived from the
        job's: references to its lines), then the final status."""
        status = {"finalizing": "completed", "cancelling": "cancelled"}.get(batch["status"], "expired")
        owner = (await self.store.get_batch(self.id))[1]
        if status in UNRUN:
            await self._unrun(batch, *UNRUN[status])
        files, lines = {}, {}
        for kind, errors in (("output", False), ("error", True)):
            lines[kind], size = await self.store.line_stats(self.id, errors)
            if lines[kind]:
                file_id = derived_id("file", self.id, kind)
                meta = file_object(file_id, size, f"{self.id}_{kind}.jsonl", "batch_output")
                await self.store.put_output_file(meta, owner, self.id, errors)
                files[f"{kind}_file_id"] = file_id
        await self._update(_if_status(tuple(ACTIVE), status, **files))
        log.info("batch %s %s: %d output lines, %d error lines", self.id, status, lines["output"], lines["error"])

    async def _unrun(self, batch: dict, code: str, message: str) -> None:
        """The error line of each request that never ran, stored as the job's other lines are."""
        done = await self.store.done_indices(self.id)
        unrun = [r for r in await self._requests(batch) if r.index not in done]
        for at in range(0, len(unrun), UNRUN_PAGE):
            page = unrun[at : at + UNRUN_PAGE]
            lines = [unrun_line(derived_id("batch_req", self.id, r.index), r, code, message) for r in page]
            await self.store.put_unrun(self.id, [(r.index, line) for r, line in zip(page, lines, strict=True)])
