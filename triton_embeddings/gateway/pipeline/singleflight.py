"""Single-flight: concurrent requests missing the same key share one computation instead of each running it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from triton_embeddings.gateway.errors import SharedCallCancelled

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """`run(keys, compute)`: keys already being computed by another caller are awaited, the rest computed."""

    def __init__(self) -> None:
        self._pending: dict[K, asyncio.Future[V]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    async def run(self, keys: list[K], compute: Callable[[list[K]], Awaitable[dict[K, V]]]) -> dict[K, V]:
        """A value for each of `keys`; `compute(mine)` gets only the keys nobody else is computing."""
        loop = asyncio.get_running_loop()
        theirs = {k: self._pending[k] for k in keys if k in self._pending}
        mine = {k: loop.create_future() for k in dict.fromkeys(keys) if k not in theirs}
        self._pending.update(mine)
        try:
            out = await compute(list(mine)) if mine else {}
        except BaseException as e:
            shared = e if isinstance(e, Exception) else SharedCallCancelled("the request computing it went away")
            for f in mine.values():
                f.set_exception(shared)
                f.exception()  # retrieved: nobody else may be waiting for it
            raise
        else:
            for k, f in mine.items():
                if k in out:
                    f.set_result(out[k])
                else:
                    f.set_exception(KeyError(k))
                    f.exception()
        finally:
            for k, f in mine.items():
                if self._pending.get(k) is f:
                    del self._pending[k]
        if theirs:
            values = await asyncio.gather(*(asyncio.shield(f) for f in theirs.values()))
            out.update(zip(theirs, values, strict=True))
        return out
