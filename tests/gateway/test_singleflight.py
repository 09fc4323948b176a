"""SingleFlight: concurrent misses of a key share one computation; its failure reaches every waiter."""

from __future__ import annotations

import asyncio

import pytest

from triton_embeddings.gateway.pipeline.singleflight import SharedCallCancelled, SingleFlight


class Computer:
    def __init__(self, fail: Exception | None = None):
        self.calls: list[list[str]] = []
        self.release = asyncio.Event()
        self.fail = fail

    async def __call__(self, keys: list[str]) -> dict[str, str]:
        self.calls.append(keys)
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return {k: k.upper() for k in keys}


def test_concurrent_overlapping_keys_are_computed_once():
    async def scenario():
        sf: SingleFlight[str, str] = SingleFlight()
        comp = Computer()
        first = asyncio.create_task(sf.run(["a", "b", "a"], comp))
        await asyncio.sleep(0)
        second = asyncio.create_task(sf.run(["b", "c"], comp))
        await asyncio.sleep(0)
        assert len(sf) == 3
        comp.release.set()
        return await first, await second, comp.calls, len(sf)

    first, second, calls, pending = asyncio.run(scenario())
    assert calls == [["a", "b"], ["c"]]
    assert first == {"a": "A", "b": "B"} and second == {"b": "B", "c": "C"}
    assert pending == 0


def test_the_owners_failure_reaches_the_waiters_and_is_not_kept():
    async def scenario():
        sf: SingleFlight[str, str] = SingleFlight()
        comp = Computer(fail=RuntimeError("upstream down"))
        owner = asyncio.create_task(sf.run(["a"], comp))
        await asyncio.sleep(0)
        waiter = asyncio.create_task(sf.run(["a"], comp))
        await asyncio.sleep(0)
        comp.release.set()
        results = await asyncio.gather(owner, waiter, return_exceptions=True)
        comp.fail = None
        again = await sf.run(["a"], comp)
        return results, again, comp.calls

    results, again, calls = asyncio.run(scenario())
    assert [str(r) for r in results] == ["upstream down", "upstream down"]
    assert again == {"a": "A"} and calls == [["a"], ["a"]], "a failed key is computed again later"


def test_a_cancelled_owner_fails_its_waiters_instead_of_hanging():
    async def scenario():
        sf: SingleFlight[str, str] = SingleFlight()
        comp = Computer()
        owner = asyncio.create_task(sf.run(["a"], comp))
        await asyncio.sleep(0)
        waiter = asyncio.create_task(sf.run(["a"], comp))
        await asyncio.sleep(0)
        owner.cancel()
        with pytest.raises(SharedCallCancelled):
            await asyncio.wait_for(waiter, 5)
        return len(sf)

    assert asyncio.run(scenario()) == 0
