"""The rerank work: inputs, limits, cache, the shared batcher, and the answer in Cohere/Jina or TEI shape."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

import numpy as np

from triton_embeddings.gateway.backend import RerankModelInfo
from triton_embeddings.gateway.batcher import Batcher
from triton_embeddings.gateway.cache import Cache, CacheEntry, pair_key
from triton_embeddings.gateway.errors import APIError, ErrorKind
from triton_embeddings.gateway.lookup import SharedLookup
from triton_embeddings.gateway.metrics import GatewayMetrics
from triton_embeddings.gateway.protocol import (
    RerankRequest,
    RerankResponse,
    RerankResultItem,
    TEIRerankItem,
    TEIRerankRequest,
)
from triton_embeddings.gateway.service import upstream
from triton_embeddings.gateway.settings import Settings

log = logging.getLogger("gateway.rerank")


@dataclass
class Scored:
    """A request's documents scored: activated scores, raw logits, and the tokens the pairs took."""

    scores: np.ndarray
    logits: np.ndarray
    tokens: int


def _invalid(message: str, param: str) -> APIError:
    return APIError(ErrorKind.INVALID_REQUEST, message, param=param)


def _check_text(text: str, what: str, param: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _invalid(f"{what} is not valid Unicode (unpaired surrogate).", param) from None


class RerankService:
    """Scores (query, document) pairs for a resolved rerank model; shares the batcher with embeddings."""

    def __init__(self, settings: Settings, batcher: Batcher, cache: Cache, metrics: GatewayMetrics):
        self.settings = settings
        self.batcher = batcher
        self.cache = cache
        self.metrics = metrics
        self._in_flight = 0
        self._lookup = SharedLookup(cache, metrics)

    def check_inputs(self, query: str, documents: list[str], param: str) -> None:
        """Empty query, no or too many documents: 400 naming the parameter."""
        if not query.strip():
            raise _invalid("'query' must be a non-empty string.", "query")
        _check_text(query, "'query'", "query")
        if not documents:
            raise _invalid(f"'{param}' must be a non-empty array of strings.", param)
        if len(documents) > self.settings.max_documents:
            raise _invalid(
                f"Too many documents: {len(documents)}. At most {self.settings.max_documents} per request.", param
            )
        for i, doc in enumerate(documents):
            _check_text(doc, f"Document {i}", param)

    async def rerank(self, req: RerankRequest, info: RerankModelInfo, request_id: str = "") -> RerankResponse:
        """Answer the Cohere/Jina shape: results best first, cut at `top_n`."""
        documents = [d if isinstance(d, str) else d.text for d in req.documents]
        self.check_inputs(req.query, documents, "documents")
        for name in ("top_n", "max_chunks_per_doc"):
            value = getattr(req, name)
            if value is not None and value < 1:
                raise _invalid(f"'{name}' must be at least 1; got {value}.", name)
        scored = await self.score(info, req.query, documents, self.settings.truncate, "documents", request_id)
        order = _best_first(scored.scores)[: req.top_n]
        results: list[RerankResultItem] = []
        for i in order:
            item: RerankResultItem = {"index": i, "relevance_score": float(scored.scores[i])}
            if req.return_documents:
                item["document"] = {"text": documents[i]}
            results.append(item)
        return {
            "id": str(uuid.uuid4()),
            "model": req.model,
            "results": results,
            "meta": {"billed_units": {"input_tokens": scored.tokens}},
            "usage": {"total_tokens": scored.tokens},
        }

    async def rerank_tei(
        self, req: TEIRerankRequest, info: RerankModelInfo, request_id: str = ""
    ) -> list[TEIRerankItem]:
        """Answer TEI's shape: `[{index, score, text?}]`, best first; `raw_scores` gives the logits."""
        self.check_inputs(req.query, req.texts, "texts")
        truncate = self.settings.truncate if req.truncate is None else req.truncate
        scored = await self.score(info, req.query, req.texts, truncate, "texts", request_id)
        values = scored.logits if req.raw_scores else scored.scores
        out: list[TEIRerankItem] = []
        for i in _best_first(scored.scores):
            item: TEIRerankItem = {"index": i, "score": float(values[i])}
            if req.return_text:
                item["text"] = req.texts[i]
            out.append(item)
        return out

    async def score(self, info: RerankModelInfo, query: str, documents: list[str], truncate: bool, param: str,
                    request_id: str) -> Scored:
        """Scores for every document (cache, then the batcher); length and token limits checked."""
        if self._in_flight >= self.settings.max_in_flight:
            raise APIError(ErrorKind.OVERLOADED, "The server is overloaded; retry shortly.")
        self._in_flight += 1
        self.metrics.in_flight.inc()
        try:
            entries = await self._entries(info, query, documents, request_id)
        finally:
            self._in_flight -= 1
            self.metrics.in_flight.dec()
        if not truncate:
            for i, e in enumerate(entries):
                if e.truncated:
                    raise APIError(
                        ErrorKind.CONTEXT_LENGTH,
                        f"This model's maximum context length is {info.max_seq_length} tokens per (query, document) "
                        f"pair; pair {i} is longer. Shorten the query or the document.",
                        param=param,
                    )
        tokens = int(sum(e.tokens for e in entries))
        if tokens > self.settings.max_tokens_per_request:
            raise APIError(
                ErrorKind.TOO_MANY_TOKENS,
                f"Requested {tokens} tokens, max {self.settings.max_tokens_per_request} tokens per request.",
                param=param,
            )
        self.metrics.inputs.labels(info.name, info.kind).observe(len(documents))
        self.metrics.tokens.labels(info.name, info.kind, info.backend).inc(tokens)
        pairs = np.stack([e.vector for e in entries])
        return Scored(pairs[:, 0], pairs[:, 1], tokens)

    async def _entries(self, info: RerankModelInfo, query: str, documents: list[str],
                       request_id: str) -> list[CacheEntry]:
        """One entry per document: cached pairs from the cache, the missing unique ones from Triton, once per
        (model, query, document) however many requests miss it at the same time."""

        async def compute(missing: list[str]) -> dict[str, CacheEntry]:
            call = self.batcher.rerank(info, [(query, d) for d in missing], request_id)
            return dict(zip(missing, await upstream(info, call, self.metrics, self.settings), strict=True))

        return await self._lookup.entries(
            documents,
            lambda d: pair_key(info.name, info.fingerprint, query, d),
            lambda d: (info.name, info.fingerprint, query, d),
            compute,
        )


def _best_first(scores: np.ndarray) -> list[int]:
    """Indices by descending score; equal scores keep the request's order."""
    return [int(i) for i in np.argsort(-scores, kind="stable")]
