"""Speed from the recorded calls, and cost per 1M tokens: a price per token for cloud endpoints, or an
hourly hardware price over the measured throughput for self-hosted ones. Prices come from flags or the
table below (docs/migration.md shows the same table); there are no other constants."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Cloud list prices in USD per 1M input tokens (standard tier, not batch), as of PRICES_READ_ON.
PRICES_READ_ON = "2025-01 (openai.com/api/pricing; not re-checked since: pass --X-price-per-1m to override)"
PRICES_PER_1M = {
    "text-embedding-3-small": 0.02,
    "text-embedding-3-large": 0.13,
    "text-embedding-ada-002": 0.10,
}


@dataclass(frozen=True)
class Speed:
    """Measured over every call that filled the cache for this endpoint."""

    requests: int
    inputs: int
    tokens: int
    wall_s: float
    p50_s: float
    p95_s: float
    retries: int  # 429/5xx answers the client retried
    concurrency: int

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def inputs_per_s(self) -> float:
        return self.inputs / self.wall_s if self.wall_s > 0 else 0.0


def speed(calls: list[tuple[int, int, float]], runs: list[tuple[int, int, float, int, int]]) -> Speed | None:
    """Speed from the cache's call and run records; None before any call was made."""
    if not calls or not runs:
        return None
    latencies = np.array([c[2] for c in calls])
    return Speed(
        requests=len(calls),
        inputs=sum(r[0] for r in runs),
        tokens=sum(r[1] for r in runs),
        wall_s=sum(r[2] for r in runs),
        p50_s=float(np.percentile(latencies, 50)),
        p95_s=float(np.percentile(latencies, 95)),
        retries=sum(r[4] for r in runs),
        concurrency=max(r[3] for r in runs),
    )


@dataclass(frozen=True)
class Cost:
    per_1m: float | None  # USD per 1M tokens; None: no price given
    basis: str  # how it was obtained, in words


def hourly_cost_per_1m(hour_price: float, tokens_per_s: float) -> float:
    """USD per 1M tokens of hardware costing `hour_price` USD/h that embeds `tokens_per_s`."""
    return hour_price / (tokens_per_s * 3600.0) * 1e6


def cost(model: str, price_per_1m: float | None, hour_price: float | None, hour_label: str,
         measured: Speed | None) -> Cost:
    """Per-token price (flag, else the table) for cloud endpoints; hourly price over throughput otherwise."""
    if price_per_1m is not None:
        return Cost(price_per_1m, "price per 1M tokens given on the command line")
    if hour_price is not None:
        if measured is None or measured.tokens_per_s <= 0:
            return Cost(None, "no throughput measured (no calls recorded)")
        value = hourly_cost_per_1m(hour_price, measured.tokens_per_s)
        return Cost(value, f"{hour_label} ${hour_price:g}/h / ({measured.tokens_per_s:,.0f} tokens/s x 3600) "
                           f"at concurrency {measured.concurrency}")
    if model in PRICES_PER_1M:
        return Cost(PRICES_PER_1M[model], f"list price, read {PRICES_READ_ON.split(' ')[0]}")
    return Cost(None, "no price: pass --X-price-per-1m, --X-hour-price, --gpu-hour-price or --node-hour-price")
