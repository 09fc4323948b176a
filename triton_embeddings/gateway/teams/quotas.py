"""The teams service the HTTP room calls: who a request is (its key), whether its quota admits it (reserve the
estimate, settle with the real count), and the charge of batch jobs; the key file's reloads run here too."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily

from triton_embeddings.gateway.backends.base import LOCAL
from triton_embeddings.gateway.errors import APIError, ErrorKind
from triton_embeddings.gateway.metrics import GatewayMetrics
from triton_embeddings.gateway.settings import Settings
from triton_embeddings.gateway.teams.buckets import (
    ADJUST,
    PEEK,
    REQUESTS,
    RESERVE,
    TITLES,
    TOKENS,
    TOKENS_PER_DAY,
    Limits,
    Outcome,
    Snapshot,
)
from triton_embeddings.gateway.teams.estimate import Estimate
from triton_embeddings.gateway.teams.headers import duration
from triton_embeddings.gateway.teams.keys import Key, KeyStore, key_id
from triton_embeddings.gateway.teams.limiter import MemoryLimiter, RedisLimiter

log = logging.getLogger("gateway.teams")
MAX_AUTHORIZATION_CHARS = 1024  # longer is no key of ours: refused before it is hashed
URL_KEY_PARAMS = frozenset({"api_key", "api-key", "apikey", "key", "access_token"})
MISSING = "You didn't provide an API key. Send it in an Authorization header: 'Bearer YOUR_KEY'."


@dataclass
class Held:
    """A request admitted by its quota; the route says how many tokens it took (`used`) once answered."""

    tokens: int | None = None

    def used(self, tokens: int) -> None:
        self.tokens = tokens


@dataclass(frozen=True)
class Usage:
    """What a request or batch chunk is counted as: its team, model, kind and backend."""

    team: str
    model: str
    kind: str
    backend: str = LOCAL


def _unauthorized(message: str) -> APIError:
    return APIError(ErrorKind.INVALID_API_KEY, message, headers={"WWW-Authenticate": "Bearer"})


class Teams:
    """Named keys, their quotas and the usage of their teams (`app.state.teams`)."""

    def __init__(self, settings: Settings, metrics: GatewayMetrics):
        self.settings = settings
        self.metrics = metrics
        defaults = Limits(settings.quota_requests_per_minute, settings.quota_tokens_per_minute,
                          settings.quota_tokens_per_day)
        self.store = KeyStore([k.get_secret_value() for k in settings.api_keys], settings.api_keys_file,
                              settings.default_team, defaults)
        if settings.quota_store == "redis":
            if settings.redis_url is None:
                raise ValueError("quota_store=redis needs EMBEDDINGS_REDIS_URL")
            self.limiter: MemoryLimiter | RedisLimiter = RedisLimiter(
                settings.redis_url.get_secret_value(), timeout_s=settings.redis_timeout_s,
                retry_s=settings.redis_retry_s, on_error=metrics.quota_errors.inc)
        else:
            self.limiter = MemoryLimiter()
        self._poll: asyncio.Task | None = None
        metrics.register(QuotaCollector(self.store))

    # ---- who is asking ---------------------------------------------------------------------------------

    def authenticate(self, authorization: str, query_names: Iterable[str]) -> Key | None:
        """The request's key (None: auth is off). A key in the URL: 400; none, unknown or absurdly long: 401.
        Keys are looked up by their sha256, so no comparison of secrets depends on where they differ."""
        if not self.store.auth_on:
            return None
        if URL_KEY_PARAMS.intersection(n.lower() for n in query_names):
            raise APIError(ErrorKind.KEY_IN_URL, "API keys are not accepted in the URL (URLs are logged by proxies "
                           "and browsers); send the key in an Authorization header: 'Bearer YOUR_KEY'.")
        if len(authorization) > MAX_AUTHORIZATION_CHARS:
            raise _unauthorized("Incorrect API key provided: the Authorization header is too long.")
        scheme, _, token = authorization.partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else ""
        key = self.store.get(key_id(given)) if given else None
        if key is None:
            raise _unauthorized("Incorrect API key provided." if given else MISSING)
        return key

    def team_of(self, key: Key | None) -> str:
        return key.team if key is not None else self.settings.default_team

    # ---- quotas ----------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def hold(self, state, usage: Usage, estimate: Estimate) -> AsyncIterator[Held]:
        """Admit one request of `state.quota_key` (400: it could never fit; 429: not now), reserving
        `estimate.estimate` tokens; on leaving, settle with `Held.used`'s count (an error refunds them)."""
        key: Key | None = getattr(state, "quota_key", None)
        held = Held()
        limited = key is not None and key.limits.any
        if limited:
            self._check_fits(key, estimate)
            await self._reserve(state, key, usage, estimate.estimate)
        try:
            yield held
        finally:
            tokens = held.tokens or 0
            if limited and tokens != estimate.estimate:
                delta = tokens - estimate.estimate
                state.ratelimit = (await self.limiter.step(key.id, key.limits, _tokens(delta), ADJUST)).snapshot
            if tokens:
                self.metrics.team_tokens.labels(usage.team, usage.model, usage.kind, usage.backend).inc(tokens)

    def _check_fits(self, key: Key, estimate: Estimate) -> None:
        cap = key.limits.token_capacity()
        if cap is not None and estimate.lower > cap:
            which = min((n for n, c in key.limits.buckets().items() if n != REQUESTS and c == cap))
            raise APIError(ErrorKind.TOKENS_OVER_QUOTA,
                           f"This request takes at least {estimate.lower} tokens, more than this key's whole limit "
                           f"of {cap} {TITLES[which]}, so it can never be admitted; send fewer or shorter inputs.",
                           param="input")

    async def _reserve(self, state, key: Key, usage: Usage, tokens: int) -> None:
        out = await self.limiter.step(key.id, key.limits, {REQUESTS: 1, **_tokens(tokens)}, RESERVE)
        state.ratelimit = out.snapshot  # the headers of the answer, a 429 too
        if out.refused is None:
            return
        self.metrics.team_rate_limited.labels(usage.team, out.refused).inc()
        raise self._refusal(key, usage, out, tokens)

    def _refusal(self, key: Key, usage: Usage, out: Outcome, tokens: int) -> APIError:
        state = out.snapshot[out.refused]
        wait = max(out.wait_s, 0.001)
        kind = ErrorKind.RATE_LIMIT_REQUESTS if out.refused == REQUESTS else ErrorKind.RATE_LIMIT_TOKENS
        asked = 1 if out.refused == REQUESTS else tokens
        message = (f"Rate limit reached for {usage.model} in team {usage.team} on {TITLES[out.refused]}: Limit "
                   f"{state.capacity}, Remaining {state.remaining}, Requested {asked}. "
                   f"Please try again in {duration(wait)}.")
        headers = {"Retry-After": str(math.ceil(wait)), "retry-after-ms": str(math.ceil(wait * 1000))}
        return APIError(kind, message, headers=headers)

    async def peek(self, key: Key) -> Snapshot:
        return (await self.limiter.step(key.id, key.limits, {}, PEEK)).snapshot

    async def charge(self, key_id_: str, tokens: int, *, model: str, kind: str = "embedding",
                     backend: str = LOCAL) -> float:
        """For batch jobs: charge `tokens` already computed for the key whose sha256 is `key_id_` (the
        `request.state.key_id` of the request that created the job) to its quotas and its team's usage. Never
        refuses; returns the seconds until the key's token quotas are out of debt again (0: not in debt), so the
        runner can pace its next chunk. A revoked key is not charged (0)."""
        key = self.store.get(key_id_)
        if key is None or tokens <= 0:
            return 0.0
        self.metrics.team_tokens.labels(key.team, model, kind, backend).inc(tokens)
        if not key.limits.any:
            return 0.0
        snapshot = (await self.limiter.step(key.id, key.limits, _tokens(tokens), ADJUST)).snapshot
        return max((-s.level / s.rate_per_ms / 1000 for n, s in snapshot.items() if n != REQUESTS and s.level < 0),
                   default=0.0)

    # ---- the key file ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Re-read the key file on SIGHUP (main thread only) and when it changes (polled)."""
        if self.store.path is None:
            return
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):  # not the main thread
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.store.reload, "SIGHUP")
        if self.settings.api_keys_reload_s > 0:
            self._poll = asyncio.create_task(self._watch(self.settings.api_keys_reload_s))

    async def _watch(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            self.store.reload_if_changed()

    async def close(self) -> None:
        if self._poll is not None:
            self._poll.cancel()
        if self.store.path is not None:
            with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        await self.limiter.close()


def _tokens(n: float) -> dict[str, float]:
    return {TOKENS: n, TOKENS_PER_DAY: n}


class QuotaCollector:
    """`gateway_team_quota{team, limit}`: the sum of the team's keys' quotas, read at each scrape (a revoked key's
    quota leaves with it); the alert on a team near its quota divides usage by it."""

    def __init__(self, store: KeyStore):
        self.store = store

    def collect(self):
        fam = GaugeMetricFamily("gateway_team_quota", "Quota of a team's keys summed, by team and limit "
                                "(requests, tokens: per minute; tokens_per_day); keys without that limit left out.",
                                labels=["team", "limit"])
        for team, keys in sorted(self.store.teams().items()):
            totals: dict[str, int] = {}
            for key in keys:
                for name, cap in key.limits.buckets().items():
                    totals[name] = totals.get(name, 0) + cap
            for name, total in totals.items():
                fam.add_metric([team, name], total)
        yield fam
