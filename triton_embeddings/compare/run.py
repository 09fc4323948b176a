"""The comparison: embed corpus and queries through every endpoint, then agreement, quality, speed, cost."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from triton_embeddings.compare import metrics
from triton_embeddings.compare.cache import VectorCache
from triton_embeddings.compare.client import ClientOptions, Embedded, embed_texts
from triton_embeddings.compare.corpus import Texts, read_qrels, read_texts
from triton_embeddings.compare.cost import PRICES_PER_1M, Cost, Speed, cost, speed
from triton_embeddings.compare.endpoint import Endpoint


@dataclass(frozen=True)
class Pricing:
    """Per-endpoint flags (by label) and the hourly default for endpoints priced by neither."""

    per_1m: dict[str, float] = field(default_factory=dict)
    hour: dict[str, float] = field(default_factory=dict)
    default_hour: float | None = None
    default_hour_label: str = "GPU"


@dataclass(frozen=True)
class Inputs:
    corpus: Texts
    queries: Texts
    exclude: np.ndarray | None  # per query, its own corpus index when sampled from the corpus
    qrels: dict[str, dict[str, int]] | None
    query_source: str


@dataclass
class EndpointResult:
    endpoint: Endpoint
    docs: Embedded
    queries: Embedded
    speed: Speed | None
    cost: Cost
    quality: metrics.Quality | None = None


@dataclass
class Comparison:
    inputs: Inputs
    results: list[EndpointResult]
    agreements: list[tuple[str, str, metrics.Agreement]]  # (reference label, label, agreement)


def load_inputs(corpus: Path, queries: Path | None, qrels: Path | None, sample: int, seed: int,
                text_field: str = "text", id_field: str | None = None, title_field: str | None = None) -> Inputs:
    docs = read_texts(corpus, text_field, id_field, title_field)
    labels = read_qrels(qrels) if qrels else None
    if queries is not None:
        q = read_texts(queries, text_field, id_field)
        return Inputs(docs, q, None, labels, f"{queries.name} ({len(q)} queries)")
    if labels is not None:
        raise ValueError("relevance labels need --queries (the labels name query ids)")
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(docs), min(sample, len(docs)), replace=False))
    q = Texts([docs.ids[i] for i in picked], [docs.texts[i] for i in picked])
    return Inputs(docs, q, picked, None, f"{len(q)} texts sampled from the corpus (seed {seed})")


def _price(ep: Endpoint, measured: Speed | None, pricing: Pricing) -> Cost:
    """Flags for this endpoint first; the default hourly price only for models the price table lacks."""
    hour, label = pricing.hour.get(ep.label), "hardware"
    unpriced = ep.label not in pricing.per_1m and ep.model not in PRICES_PER_1M
    if hour is None and unpriced and pricing.default_hour is not None:
        hour, label = pricing.default_hour, pricing.default_hour_label
    return cost(ep.model, pricing.per_1m.get(ep.label), hour, label, measured)


def embed_endpoint(ep: Endpoint, inputs: Inputs, cache: VectorCache, options: ClientOptions,
                   pricing: Pricing) -> EndpointResult:
    docs = embed_texts(ep, inputs.corpus.texts, cache, options)
    queries = embed_texts(ep, inputs.queries.texts, cache, options)
    measured = speed(cache.calls(ep.cache_key), cache.runs(ep.cache_key))
    result = EndpointResult(ep, docs, queries, measured, _price(ep, measured, pricing))
    if inputs.qrels is not None:
        result.quality = metrics.quality(queries.vectors, docs.vectors, inputs.queries.ids, inputs.corpus.ids,
                                         inputs.qrels)
    return result


def compare(endpoints: list[Endpoint], inputs: Inputs, cache: VectorCache, options: ClientOptions,
            pricing: Pricing, max_pairs: int = 200_000) -> Comparison:
    """Every endpoint embedded and measured; agreement of each with the first (the reference)."""
    results = [embed_endpoint(ep, inputs, cache, options, pricing) for ep in endpoints]
    ref = results[0]
    agreements = [
        (ref.endpoint.label, r.endpoint.label,
         metrics.agreement(ref.queries.vectors, ref.docs.vectors, r.queries.vectors, r.docs.vectors,
                           inputs.exclude, max_pairs))
        for r in results[1:]
    ]
    return Comparison(inputs, results, agreements)
