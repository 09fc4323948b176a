"""Per-text embedding cache: key = model (+ config fingerprint) and sha256(text); value = the full vector."""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

import cachetools
import numpy as np

log = logging.getLogger("gateway.cache")

_HEADER = struct.Struct("<iB")  # token count, truncated flag


@dataclass(frozen=True)
class CacheEntry:
    """What one text embeds to: the full vector, its token count, and whether it was truncated.

    For a rerank model's (query, document) pair the vector is [score, logit]."""

    vector: np.ndarray  # [D] float32
    tokens: int
    truncated: bool

    def to_bytes(self) -> bytes:
        return _HEADER.pack(self.tokens, self.truncated) + self.vector.astype("<f4").tobytes()

    @classmethod
    def from_bytes(cls, raw: bytes) -> CacheEntry:
        tokens, truncated = _HEADER.unpack_from(raw)
        return cls(np.frombuffer(raw, dtype="<f4", offset=_HEADER.size), tokens, bool(truncated))


def cache_key(model: str, fingerprint: str, text: str) -> str:
    """The key of one text for one model configuration."""
    return f"emb:{model}:{fingerprint}:{hashlib.sha256(text.encode('utf-8')).hexdigest()}"


def pair_key(model: str, fingerprint: str, query: str, document: str) -> str:
    """The key of one (query, document) pair for one rerank model configuration."""
    pair = json.dumps([query, document], ensure_ascii=False).encode("utf-8")
    return f"rerank:{model}:{fingerprint}:{hashlib.sha256(pair).hexdigest()}"


class Cache:
    """No caching; the interface the pipeline uses."""

    name = "none"
    enabled = False

    def __init__(self) -> None:
        self.on_error: Callable[[], None] = lambda: None

    async def get_many(self, keys: list[str]) -> list[CacheEntry | None]:
        return [None] * len(keys)

    async def set_many(self, items: dict[str, CacheEntry]) -> None:
        return None

    async def close(self) -> None:
        return None


class MemoryCache(Cache):
    """In-process LRU (cachetools), optionally with a TTL."""

    name = "memory"
    enabled = True

    def __init__(self, size: int, ttl_s: float | None = None):
        super().__init__()
        self._data: cachetools.Cache = cachetools.TTLCache(size, ttl_s) if ttl_s else cachetools.LRUCache(size)

    async def get_many(self, keys: list[str]) -> list[CacheEntry | None]:
        return [self._data.get(k) for k in keys]

    async def set_many(self, items: dict[str, CacheEntry]) -> None:
        for k, v in items.items():
            self._data[k] = v


class RedisCache(Cache):
    """Redis (redis-py asyncio). Any Redis failure is counted and the request goes on without the cache."""

    name = "redis"
    enabled = True

    def __init__(self, url: str, *, ttl_s: float | None, timeout_s: float, retry_s: float):
        super().__init__()
        import redis.asyncio as aioredis

        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry_on_timeout=False
        )
        self._ttl_ms = int(ttl_s * 1000) if ttl_s else None
        self._retry_s = retry_s
        self._down_until = 0.0

    def _skip(self) -> bool:
        return time.monotonic() < self._down_until

    def _failed(self, what: str, exc: Exception) -> None:
        self.on_error()
        self._down_until = time.monotonic() + self._retry_s
        log.warning(
            "Redis %s failed (%s); serving without the cache for %.0f s",
            what,
            type(exc).__name__,
            self._retry_s,
        )

    async def get_many(self, keys: list[str]) -> list[CacheEntry | None]:
        if not keys or self._skip():
            return [None] * len(keys)
        try:
            raw = await self._redis.mget(keys)
            return [CacheEntry.from_bytes(r) if r else None for r in raw]
        except Exception as e:  # redis errors, timeouts, OSError, corrupt entries alike
            self._failed("read", e)
            return [None] * len(keys)

    async def set_many(self, items: dict[str, CacheEntry]) -> None:
        if not items or self._skip():
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for k, v in items.items():
                    pipe.set(k, v.to_bytes(), px=self._ttl_ms)
                await pipe.execute()
        except Exception as e:
            self._failed("write", e)

    async def close(self) -> None:
        try:
            await self._redis.aclose()
        except Exception:
            pass


def make_cache(
    kind: str,
    *,
    size: int,
    ttl_s: float | None,
    redis_url: str | None,
    redis_timeout_s: float,
    redis_retry_s: float,
) -> Cache:
    """Build the cache the settings ask for."""
    if kind == "memory" and size > 0:
        return MemoryCache(size, ttl_s)
    if kind == "redis":
        if not redis_url:
            raise ValueError("cache=redis needs EMBEDDINGS_REDIS_URL")
        return RedisCache(redis_url, ttl_s=ttl_s, timeout_s=redis_timeout_s, retry_s=redis_retry_s)
    return Cache()
