"""OpenAI's rate-limit headers: the six `x-ratelimit-*` names and their duration format (`6m0s`, `1s`, `20ms`)."""

from __future__ import annotations

import math

from triton_embeddings.gateway.teams.buckets import REQUESTS, TOKENS, Snapshot


def duration(seconds: float) -> str:
    """A duration as OpenAI writes it (Go's `time.Duration` format at millisecond resolution, rounded up):
    `0s`, `20ms`, `1s`, `1.5s`, `6m0s`, `1h2m3.25s`."""
    ms = max(0, math.ceil(round(seconds * 1000, 6)))  # round first: 0.1 s * 1000 is 100.00000000000001
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest // 1000}.{rest % 1000:03d}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def ratelimit_headers(snapshot: Snapshot) -> list[tuple[bytes, bytes]]:
    """`x-ratelimit-{limit,remaining,reset}-{requests,tokens}` for each per-minute limit the key has: the bucket's
    size, what is left now (never below 0, a debt included) and the time until it is full again."""
    out = []
    for bucket, suffix in ((REQUESTS, b"requests"), (TOKENS, b"tokens")):
        state = snapshot.get(bucket)
        if state is None:
            continue
        out += [(b"x-ratelimit-limit-" + suffix, str(state.capacity).encode()),
                (b"x-ratelimit-remaining-" + suffix, str(state.remaining).encode()),
                (b"x-ratelimit-reset-" + suffix, duration(state.until_full_s).encode())]
    return out
