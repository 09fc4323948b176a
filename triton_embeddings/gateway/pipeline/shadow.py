"""Shadow traffic: a sampled share of an upstream model's requests is embedded again by a local model after
the answer went back to the client (a background task of the response), to see whether local capacity
carries the real traffic. Only metrics are kept; the cache is bypassed, so the local path does the work."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable

from triton_embeddings.gateway.backends.base import ModelInfo
from triton_embeddings.gateway.errors import APIError
from triton_embeddings.gateway.metrics import GatewayMetrics
from triton_embeddings.gateway.settings import ShadowConfig

log = logging.getLogger("gateway.shadow")


class Shadow:
    """Samples requests and runs their shadow copies, at most `max_in_flight` at once (more are dropped)."""

    def __init__(self, resolve: Callable[[str], ModelInfo], embed: Callable[[ModelInfo, list[str]], Awaitable],
                 metrics: GatewayMetrics, max_in_flight: int, sample: Callable[[], float] = random.random):
        self.resolve = resolve  # local model name -> ModelInfo (raises APIError when not served)
        self.embed = embed  # the local path without the cache
        self.metrics = metrics
        self.max_in_flight = max_in_flight
        self.sample = sample
        self.in_flight = 0

    def sampled(self, config: ShadowConfig | None) -> bool:
        """Whether this request gets a shadow copy (the HTTP room runs `run` after the response)."""
        return config is not None and config.share > 0 and self.sample() < config.share

    async def run(self, source: str, target: str, texts: list[str]) -> None:
        if self.in_flight >= self.max_in_flight:
            self.metrics.shadow_requests.labels(source, target, "dropped").inc()
            return
        self.in_flight += 1
        outcome, t0 = "ok", time.perf_counter()
        try:
            await self.embed(self.resolve(target), texts)
        except APIError as e:
            outcome = e.code or e.kind.name.lower()
        except Exception as e:  # never let a shadow failure reach the server's error log as a crash
            outcome = "error"
            log.warning("shadow to %s failed: %s", target, type(e).__name__)
        finally:
            self.in_flight -= 1
            self.metrics.shadow_duration.labels(target).observe(time.perf_counter() - t0)
            self.metrics.shadow_requests.labels(source, target, outcome).inc()
