"""The rerank task: a query and its documents -> one score per (query, document) pair, through the template."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from triton_embeddings.gateway.backends.base import Backend, RerankModelInfo
from triton_embeddings.gateway.errors import APIError, ErrorKind
from triton_embeddings.gateway.pipeline.admission import check_unicode
from triton_embeddings.gateway.pipeline.batcher import BatchCall
from triton_embeddings.gateway.pipeline.cache import CacheEntry, pair_key
from triton_embeddings.gateway.pipeline.serving import Serving, entries_of

Pair = tuple[str, str]


@dataclass(frozen=True)
class Pairs:
    """The domain input of one rerank request: a query, its documents, and whether over-long pairs are cut."""

    query: str
    documents: list[str]
    truncate: bool = True
    param: str = "documents"  # the request field that holds the documents


@dataclass
class Scored:
    """A request's documents scored: activated scores, raw logits, and the tokens the pairs took."""

    scores: np.ndarray
    logits: np.ndarray
    tokens: int


def rerank_batch(backend: Backend) -> BatchCall:
    """The batcher's call for (query, document) rows: one `backend.rerank`; each entry's vector is [score, logit]."""

    async def call(info: RerankModelInfo, pairs: list[Pair], request_id: str) -> list[CacheEntry]:
        res = await backend.rerank(info.name, [q for q, _ in pairs], [d for _, d in pairs], request_id)
        return entries_of(zip(res.scores, res.logits), res.token_counts, res.truncated)

    return call


class RerankServing(Serving[Pairs, Scored]):
    """Scores (query, document) pairs for a resolved rerank model; shares the batcher with embeddings."""

    kind = RerankModelInfo.kind

    batch_call = staticmethod(rerank_batch)

    def check(self, info: RerankModelInfo, inputs: Pairs) -> None:
        """Empty query, no or too many documents: 400 naming the parameter."""
        if not inputs.query.strip():
            raise APIError(ErrorKind.INVALID_REQUEST, "'query' must be a non-empty string.", param="query")
        check_unicode(inputs.query, "'query'", "query")
        if not inputs.documents:
            raise APIError(ErrorKind.INVALID_REQUEST, f"'{inputs.param}' must be a non-empty array of strings.",
                           param=inputs.param)
        self.admission.check_count(len(inputs.documents), self.settings.max_documents, "documents", inputs.param)
        for i, doc in enumerate(inputs.documents):
            check_unicode(doc, f"Document {i}", inputs.param)

    async def entries(self, info: RerankModelInfo, inputs: Pairs, request_id: str) -> list[CacheEntry]:
        """One entry per document: cached pairs from the cache, the missing unique ones from the backend, once per
        (model, query, document) however many requests miss it at the same time."""
        query = inputs.query

        async def compute(missing: list[str]) -> dict[str, CacheEntry]:
            pairs = [(query, d) for d in missing]
            call = self.batcher.submit(info, pairs, [len(query) + len(d) for d in missing], self.call, request_id)
            return dict(zip(missing, await self.admission.call(info, call), strict=True))

        return await self.lookup.entries(
            inputs.documents,
            lambda d: pair_key(info.name, info.fingerprint, query, d),
            lambda d: (info.name, info.fingerprint, query, d),
            compute,
        )

    def param(self, inputs: Pairs) -> str:
        return inputs.param

    def refuses_truncated(self, inputs: Pairs) -> bool:
        return not inputs.truncate

    def too_long(self, info: RerankModelInfo, index: int) -> str:
        return (f"This model's maximum context length is {info.max_seq_length} tokens per (query, document) pair; "
                f"pair {index} is longer. Shorten the query or the document.")

    def result(self, entries: list[CacheEntry], tokens: int) -> Scored:
        pairs = np.stack([e.vector for e in entries])
        return Scored(pairs[:, 0], pairs[:, 1], tokens)
