"""What embeddings and rerank share for their inputs: the cache first, then one computation per missing input
however many requests miss it at the same time (single-flight)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable

from triton_embeddings.gateway.metrics import GatewayMetrics
from triton_embeddings.gateway.pipeline.cache import Cache, CacheEntry
from triton_embeddings.gateway.pipeline.singleflight import SingleFlight

Compute = Callable[[list[str]], Awaitable[dict[str, CacheEntry]]]


class SharedLookup:
    """Entries for items (texts, or documents of one query): cached ones from the cache, the missing ones from
    `compute`, once per flight key at a time; the request that computes an item also caches it. A shared
    computation abandoned by the request running it raises `SharedCallCancelled` (the failure path answers it)."""

    def __init__(self, cache: Cache, metrics: GatewayMetrics):
        self.cache = cache
        self.metrics = metrics
        self._flights: SingleFlight[Hashable, CacheEntry] = SingleFlight()

    async def entries(self, items: list[str], cache_key: Callable[[str], str], flight_key: Callable[[str], Hashable],
                      compute: Compute) -> list[CacheEntry]:
        """One entry per item; duplicates are looked up and computed once."""
        unique = list(dict.fromkeys(items))
        found: dict[str, CacheEntry] = {}
        if self.cache.enabled:
            cached = await self.cache.get_many([cache_key(i) for i in unique])
            found = {i: e for i, e in zip(unique, cached, strict=True) if e is not None}
            self.metrics.cache_hits.inc(len(found))
            self.metrics.cache_misses.inc(len(unique) - len(found))
        missing = [i for i in unique if i not in found]
        if missing:
            found.update(await self._shared(missing, cache_key, flight_key, compute))
        return [found[i] for i in items]

    async def _shared(self, items: list[str], cache_key: Callable[[str], str], flight_key: Callable[[str], Hashable],
                      compute: Compute) -> dict[str, CacheEntry]:
        by_key = {flight_key(i): i for i in items}

        async def mine(keys: list[Hashable]) -> dict[Hashable, CacheEntry]:
            computed = await compute([by_key[k] for k in keys])
            if self.cache.enabled:
                await self.cache.set_many({cache_key(i): e for i, e in computed.items()})
            return {flight_key(i): e for i, e in computed.items()}

        shared = await self._flights.run(list(by_key), mine)
        return {by_key[k]: e for k, e in shared.items()}
