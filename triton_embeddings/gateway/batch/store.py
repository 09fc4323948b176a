"""The batch store's interface: files, jobs, the lease on a job and its output lines, keyed by line index.

Two stores implement it: SQLite (one file, the default) and Redis (shared by every gateway). Every write a
runner makes is idempotent: a line index is written once (the first write wins), a job's output files have ids
derived from the job's, so a runner that crashed and one that took its lease over write the same thing.

A job's output and error files are not copies: each is a reference to the job's stored lines of its kind (OK
lines; FAILED and UNRUN lines), read back in index order a page at a time (`file_pages`), so neither finishing a
job nor downloading its output holds more than a page of lines in memory.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from triton_embeddings.gateway.errors import StoreUnavailable

TERMINAL = ("completed", "failed", "cancelled", "expired")
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
# A stored line's kind: answered (output file), answered with an error, never run (cancelled or expired first).
# Only OK and FAILED lines count in `request_counts`; the error file holds FAILED and UNRUN lines.
OK, FAILED, UNRUN = 0, 1, 2

# A change of a job's record under the store's lock: the new record, or None to leave it as it is.
Change = Callable[[dict], dict | None]


@dataclass(frozen=True)
class Page:
    """One page of a listing, newest first."""

    data: list[dict]
    has_more: bool


@dataclass(frozen=True)
class Line:
    """One output line as stored: its index in the input file and its JSON."""

    index: int
    body: bytes


def unavailable(method):
    """A store call that fails (the server down, the disk gone) raises `StoreUnavailable` (the client's 503)."""

    @functools.wraps(method)
    async def wrapped(self, *args, **kwargs):
        try:
            return await method(self, *args, **kwargs)
        except StoreUnavailable:
            raise
        except Exception as e:
            if not self.is_outage(e):
                raise
            raise StoreUnavailable(type(e).__name__) from None

    return wrapped


class BatchStore(ABC):
    """Where files and jobs live; `owner` is the creating key's id (None when auth is off: seen by anyone)."""

    name: str

    def is_outage(self, e: Exception) -> bool:
        """Whether a failure of a call is the store's (unreachable, broken), not a bug."""
        return isinstance(e, OSError)

    @abstractmethod
    async def put_file(self, meta: dict, owner: str | None, content: bytes) -> None:
        """Write a file (a new one, or a job's output file again under the same id)."""

    @abstractmethod
    async def get_file(self, file_id: str) -> tuple[dict, str | None] | None:
        """A file's object and owner; None when there is none."""

    @abstractmethod
    async def file_content(self, file_id: str) -> bytes | None:
        """An uploaded file's content (a job's output file has none here: see `file_pages`)."""

    @abstractmethod
    async def put_output_file(self, meta: dict, owner: str | None, batch_id: str, errors: bool) -> None:
        """Write a job's output (`errors` False) or error file: a reference to the job's lines of that kind."""

    @abstractmethod
    async def file_source(self, file_id: str) -> tuple[str, bool] | None:
        """The (job, errors) whose lines a job's output file is made of; None for an uploaded file."""

    async def file_pages(self, file_id: str, page_lines: int) -> AsyncIterator[bytes]:
        """A file's content in order: an upload in one piece (bounded by the upload cap), a job's output file
        `page_lines` lines at a time, each read from the store when the previous one has been taken."""
        source = await self.file_source(file_id)
        if source is None:
            yield await self.file_content(file_id) or b""
            return
        after = -1
        while True:
            page = await self.line_page(*source, after, page_lines)
            if page:
                yield b"".join(line.body + b"\n" for line in page)
            if len(page) < page_lines:
                return
            after = page[-1].index

    @abstractmethod
    async def list_files(self, owner: str | None, limit: int, after: str | None) -> Page: ...

    @abstractmethod
    async def delete_file(self, file_id: str) -> bool: ...

    @abstractmethod
    async def put_batch(self, batch: dict, owner: str | None) -> None:
        """Create a job."""

    @abstractmethod
    async def get_batch(self, batch_id: str) -> tuple[dict, str | None] | None:
        """A job's object (its `request_counts` read from the lines written) and owner; None when there is none."""

    @abstractmethod
    async def list_batches(self, owner: str | None, limit: int, after: str | None) -> Page: ...

    @abstractmethod
    async def update_batch(self, batch_id: str, change: Change) -> dict | None:
        """Apply `change` to a job's record atomically; the record it wrote, None when it left it."""

    @abstractmethod
    async def active_batches(self) -> list[str]:
        """Ids of the jobs not finished yet, oldest first."""

    @abstractmethod
    async def status_counts(self) -> dict[str, int]:
        """Jobs by status."""

    @abstractmethod
    async def acquire(self, batch_id: str, runner: str, ttl_s: float) -> bool:
        """Take or renew the job's lease (free, expired, or `runner`'s own); True when `runner` holds it now."""

    @abstractmethod
    async def release(self, batch_id: str, runner: str) -> None: ...

    @abstractmethod
    async def put_line(self, batch_id: str, index: int, kind: int, body: bytes) -> bool:
        """Write output line `index` (OK, FAILED) unless it was written before; True when this call wrote it."""

    @abstractmethod
    async def put_unrun(self, batch_id: str, lines: list[tuple[int, bytes]]) -> None:
        """Write (index, body) UNRUN lines, each unless its index was written before."""

    @abstractmethod
    async def done_indices(self, batch_id: str) -> set[int]: ...

    @abstractmethod
    async def line_page(self, batch_id: str, errors: bool, after: int, limit: int) -> list[Line]:
        """At most `limit` lines of the output (`errors` False) or error file with an index above `after`, in
        index order."""

    @abstractmethod
    async def line_stats(self, batch_id: str, errors: bool) -> tuple[int, int]:
        """The output or error file's lines and bytes (each line's JSON and its newline)."""

    @abstractmethod
    async def close(self) -> None: ...


def make_store(url: str) -> BatchStore:
    """The store a URL names: sqlite:///path or redis://..."""
    if url.startswith("sqlite://"):
        from triton_embeddings.gateway.batch.sqlite_store import SQLiteStore

        return SQLiteStore(url.removeprefix("sqlite:///"))  # as SQLAlchemy: sqlite:////abs, sqlite:///relative
    if url.startswith(("redis://", "rediss://", "unix://")):
        from triton_embeddings.gateway.batch.redis_store import RedisStore

        return RedisStore(url)
    raise ValueError("EMBEDDINGS_BATCH_STORE must be sqlite:///path or redis://host:port/db")
