"""Where the buckets live: in this process (`MemoryLimiter`: each gateway enforces its own quotas), or in Redis
(`RedisLimiter`: one Lua script per step, atomic, on Redis' clock, so several gateways enforce them together).
If Redis fails, the Redis limiter enforces the quotas in process until it answers again (counted and logged)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from triton_embeddings.gateway.teams.buckets import BucketState, Limits, Outcome, rate_per_ms, step

log = logging.getLogger("gateway.teams")

# Mirrors buckets.step: KEYS = one hash per bucket {l: level, t: at_ms}; ARGV = mode, now_ms (0: Redis' TIME),
# then (capacity, rate per ms, cost) per bucket. Levels go back as strings (Redis would truncate Lua floats).
STEP_LUA = """
local mode, now = tonumber(ARGV[1]), tonumber(ARGV[2])
if now == 0 then local t = redis.call('TIME'); now = t[1] * 1000 + t[2] / 1000 end
local levels, refused, wait = {}, 0, 0
for i = 1, #KEYS do
  local cap, rate, cost = tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1]), tonumber(ARGV[3 * i + 2])
  local st = redis.call('HMGET', KEYS[i], 'l', 't')
  local level = cap
  if st[1] then level = math.min(cap, tonumber(st[1]) + (now - tonumber(st[2])) * rate) end
  levels[i] = level
  if mode == 1 and cost > level and (cost - level) / rate > wait then refused, wait = i, (cost - level) / rate end
end
if mode ~= 0 and refused == 0 then
  for i = 1, #KEYS do
    local cap, rate, cost = tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1]), tonumber(ARGV[3 * i + 2])
    levels[i] = math.min(cap, levels[i] - cost)
    redis.call('HSET', KEYS[i], 'l', string.format('%.17g', levels[i]), 't', string.format('%.17g', now))
    redis.call('PEXPIRE', KEYS[i], math.ceil((cap - levels[i]) / rate) + 1000)
  end
end
local out = {refused, string.format('%.17g', wait)}
for i = 1, #KEYS do out[i + 2] = string.format('%.17g', levels[i]) end
return out
"""

Specs = list[tuple[int, float, float]]


def specs_of(limits: Limits, costs: dict[str, float]) -> tuple[list[str], Specs]:
    """The key's buckets (names) and their (capacity, rate per ms, cost)."""
    names, specs = [], []
    for name, cap in limits.buckets().items():
        names.append(name)
        specs.append((cap, rate_per_ms(name, cap), float(costs.get(name, 0))))
    return names, specs


def outcome(names: list[str], specs: Specs, refused: int, wait_ms: float, levels: list[float]) -> Outcome:
    snapshot = {n: BucketState(cap, level, rate) for n, (cap, rate, _), level in zip(names, specs, levels)}
    return Outcome(snapshot, names[refused - 1] if refused else None, wait_ms / 1000)


class MemoryLimiter:
    """The buckets of this process (a dict: one entry per bucket of a key that was used)."""

    name = "memory"

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._stored: dict[tuple[str, str], tuple[float, float]] = {}

    async def step(self, key_id: str, limits: Limits, costs: dict[str, float], mode: int) -> Outcome:
        names, specs = specs_of(limits, costs)
        now = self._clock() * 1000
        refused, wait, levels = step([self._stored.get((key_id, n)) for n in names], now, specs, mode)
        if mode and not refused:
            for n, level in zip(names, levels):
                self._stored[(key_id, n)] = (level, now)
        return outcome(names, specs, refused, wait, levels)

    async def close(self) -> None:
        return None


class RedisLimiter:
    """The buckets in Redis, one hash per (key, limit), expiring once full again; one script call per step."""

    name = "redis"

    def __init__(self, url: str, *, timeout_s: float, retry_s: float, on_error: Callable[[], None] = lambda: None):
        import redis.asyncio as aioredis

        self._redis = aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                              retry_on_timeout=False)
        self._script = self._redis.register_script(STEP_LUA)
        self._fallback = MemoryLimiter()
        self._retry_s = retry_s
        self._down_until = 0.0
        self.on_error = on_error

    async def step(self, key_id: str, limits: Limits, costs: dict[str, float], mode: int,
                   now_ms: float = 0) -> Outcome:
        """One step in Redis (`now_ms` 0: Redis' clock); Redis failing: in process, retried after `retry_s`."""
        if time.monotonic() >= self._down_until:
            names, specs = specs_of(limits, costs)
            keys = [f"quota:{{{key_id}}}:{n}" for n in names]  # one hash slot per key (Redis Cluster)
            args = [mode, now_ms] + [v for spec in specs for v in spec]
            try:
                raw = await self._script(keys=keys, args=args)
                return outcome(names, specs, int(raw[0]), float(raw[1]), [float(v) for v in raw[2:]])
            except Exception as e:  # redis errors, timeouts, OSError alike
                self.on_error()
                self._down_until = time.monotonic() + self._retry_s
                log.warning("Redis quota step failed (%s); quotas are enforced per process for %.0f s",
                            type(e).__name__, self._retry_s)
        return await self._fallback.step(key_id, limits, costs, mode)

    async def close(self) -> None:
        try:
            await self._redis.aclose()
        except Exception:
            pass
