"""The batch store's interface: files, jobs, the lease on a job and its output lines, keyed by line index.

Two stores implement it: SQLite (one file, the default) and Redis (shared by every gateway). Every write a
runner makes is idempotent: a line index is written once (the first write wins), a job's output files have ids
derived from the job's, so a runner that crashed and one that took its lease over write the same thing.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from triton_embeddings.gateway.errors import StoreUnavailable

TERMINAL = ("completed", "failed", "cancelled", "expired")
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")

# A change of a job's record under the store's lock: the new record, or None to leave it as it is.
Change = Callable[[dict], dict | None]


@dataclass(frozen=True)
class Page:
    """One page of a listing, newest first."""

    data: list[dict]
    has_more: bool


@dataclass(frozen=True)
class Line:
    """One output line as stored: its index in the input file, whether it failed, and its JSON."""

    index: int
    failed: bool
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
    async def file_content(self, file_id: str) -> bytes | None: ...

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
    async def put_line(self, batch_id: str, index: int, failed: bool, body: bytes) -> bool:
        """Write output line `index` unless it was written before; True when this call wrote it."""

    @abstractmethod
    async def done_indices(self, batch_id: str) -> set[int]: ...

    @abstractmethod
    async def lines(self, batch_id: str) -> list[Line]:
        """Every output line written, in input order."""

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
