"""The quota model: each limit of a key is a token bucket that holds its limit and refills continuously (a quota
of N per minute refills N/60 each second), so there is no window edge to burst across and a refused request waits
only for the share it lacks. One step over a key's buckets is all-or-nothing; `limiter.py` runs it in process,
and the same step as a Lua script inside Redis (atomic across gateways)."""

from __future__ import annotations

from dataclasses import dataclass

REQUESTS, TOKENS, TOKENS_PER_DAY = "requests", "tokens", "tokens_per_day"
WINDOW_S = {REQUESTS: 60.0, TOKENS: 60.0, TOKENS_PER_DAY: 86_400.0}
# The words OpenAI's 429 messages use for each limit.
TITLES = {REQUESTS: "requests per min (RPM)", TOKENS: "tokens per min (TPM)", TOKENS_PER_DAY: "tokens per day (TPD)"}
PEEK, RESERVE, ADJUST = 0, 1, 2


@dataclass(frozen=True)
class Limits:
    """A key's quotas; 0: no such limit."""

    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    tokens_per_day: int = 0

    def buckets(self) -> dict[str, int]:
        """The key's buckets in a fixed order: name -> capacity (only the limits it has)."""
        caps = {REQUESTS: self.requests_per_minute, TOKENS: self.tokens_per_minute,
                TOKENS_PER_DAY: self.tokens_per_day}
        return {name: cap for name, cap in caps.items() if cap > 0}

    @property
    def any(self) -> bool:
        return bool(self.buckets())

    def token_capacity(self) -> int | None:
        """The most tokens one request can ever take (the smallest token bucket); None: unlimited."""
        caps = [c for n, c in self.buckets().items() if n != REQUESTS]
        return min(caps) if caps else None


@dataclass(frozen=True)
class BucketState:
    """One bucket after a step: its level (below 0: a debt from tokens counted after the fact) and refill rate."""

    capacity: int
    level: float
    rate_per_ms: float

    @property
    def remaining(self) -> int:
        return max(0, int(self.level))

    @property
    def until_full_s(self) -> float:
        return max(0.0, self.capacity - self.level) / self.rate_per_ms / 1000


Snapshot = dict[str, BucketState]


@dataclass(frozen=True)
class Outcome:
    """A step's result: the buckets after it; when refused, which bucket refused and how long until it would not."""

    snapshot: Snapshot
    refused: str | None = None
    wait_s: float = 0.0


def rate_per_ms(name: str, capacity: int) -> float:
    return capacity / (WINDOW_S[name] * 1000)


def step(stored: list[tuple[float, float] | None], now_ms: float, specs: list[tuple[int, float, float]],
         mode: int) -> tuple[int, float, list[float]]:
    """One step over a key's buckets, the model the Lua script mirrors line by line.

    `stored`: each bucket's (level, at_ms) or None (never used: full); `specs`: (capacity, rate per ms, cost).
    PEEK reads, RESERVE takes every cost or none (refused: the 1-based index of the bucket that needs the longest
    wait, and that wait in ms), ADJUST adds the costs unconditionally (a negative cost refunds, up to capacity).
    Returns (refused index or 0, wait ms, levels after)."""
    levels = []
    refused, wait = 0, 0.0
    for i, (cap, rate, cost) in enumerate(specs):
        level = float(cap) if stored[i] is None else min(cap, stored[i][0] + (now_ms - stored[i][1]) * rate)
        levels.append(level)
        if mode == RESERVE and cost > level and (cost - level) / rate > wait:
            refused, wait = i + 1, (cost - level) / rate
    if mode == PEEK or refused:
        return refused, wait, levels
    return 0, 0.0, [min(cap, level - cost) for level, (cap, _, cost) in zip(levels, specs)]
