"""The embeddings task: texts (with their retrieval options) -> one vector per text, through the template."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from triton_embeddings import contract
from triton_embeddings.gateway.backends.base import LOCAL, Backend, ModelInfo
from triton_embeddings.gateway.pipeline import retrieval
from triton_embeddings.gateway.pipeline.admission import check_unicode
from triton_embeddings.gateway.pipeline.batcher import BatchCall
from triton_embeddings.gateway.pipeline.cache import CacheEntry, cache_key
from triton_embeddings.gateway.pipeline.serving import Serving, entries_of

log = logging.getLogger("gateway.service")

# What a row that sends no value of an optional per-row input means (sent for it when another row sends one).
ROW_DEFAULTS = {contract.PROMPT_NAME: "", contract.TRUNCATE: "END"}


@dataclass(frozen=True)
class TextRow:
    """One text for the batcher, with its optional per-row Triton inputs ((contract name, value), ...)."""

    text: str
    inputs: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Texts:
    """The domain input of one embeddings request."""

    texts: list[str]
    options: retrieval.Options = field(default_factory=retrieval.Options)
    param: str = "input"


@dataclass
class Embedded:
    """The vectors of a request's texts ([n, D] float32, in order) and the tokens they took."""

    vectors: np.ndarray
    tokens: int


def _row_options(rows: list[TextRow]) -> dict[str, list[str]] | None:
    """The optional per-row inputs of a batch; None when no row sends one (plain requests)."""
    names = dict.fromkeys(name for row in rows for name, _ in row.inputs)
    if not names:
        return None
    values = [dict(row.inputs) for row in rows]
    return {name: [v.get(name) or ROW_DEFAULTS[name] for v in values] for name in names}


def embed_batch(backend: Backend) -> BatchCall:
    """The batcher's call for text rows: one `backend.embed` (plain requests send no optional inputs)."""

    async def call(info: ModelInfo, rows: list[TextRow], request_id: str) -> list[CacheEntry]:
        texts, options = [r.text for r in rows], _row_options(rows)
        if options:
            res = await backend.embed(info.name, texts, request_id, options)
        else:
            res = await backend.embed(info.name, texts, request_id)
        return entries_of(res.embeddings, res.token_counts, res.truncated)

    return call


class EmbeddingServing(Serving[Texts, Embedded]):
    """Answers embeddings requests for a resolved model (the registry resolves names)."""

    kind = ModelInfo.kind

    batch_call = staticmethod(embed_batch)

    def check(self, info: ModelInfo, inputs: Texts) -> None:
        self.admission.check_count(len(inputs.texts), self.settings.max_inputs, "inputs", inputs.param)
        for i, text in enumerate(inputs.texts):
            check_unicode(text, f"Input {i}", inputs.param)
        if self.settings.log_inputs and log.isEnabledFor(logging.DEBUG):
            log.debug("inputs: %r", inputs.texts)

    async def entries(self, info: ModelInfo, inputs: Texts, request_id: str) -> list[CacheEntry]:
        if inputs.options.chunk:
            return await self._chunked(info, inputs, request_id)
        return await self._entries(info, inputs.texts, inputs.options, request_id)

    def param(self, inputs: Texts) -> str:
        return inputs.param

    def refuses_truncated(self, inputs: Texts) -> bool:
        return inputs.options.truncate == "NONE"

    def too_long(self, info: ModelInfo, index: int) -> str:
        return (f"This model's maximum context length is {info.max_seq_length} tokens; input {index} is longer. "
                "Please reduce the length of the input, or send truncate END or START.")

    def result(self, entries: list[CacheEntry], tokens: int) -> Embedded:
        return Embedded(np.stack([e.vector for e in entries]), tokens)

    async def _chunked(self, info: ModelInfo, inputs: Texts, request_id: str) -> list[CacheEntry]:
        """Inputs over the max length as overlapping windows (cut by the tokenizer step), embedded like any
        text, then combined by a token-weighted mean; usage counts every window's tokens."""
        texts, opts = inputs.texts, inputs.options
        names = [opts.prompt_name] * len(texts) if opts.prompt_name else None
        spans = await self.admission.call(info, self.backend.windows(info.name, texts, names, request_id))
        self.admission.check_tokens(sum(k for rows in spans for _, _, k in rows), inputs.param, " (in windows)")
        pieces = [[t] if len(rows) <= 1 else [t[a:b] for a, b, _ in rows] for t, rows in zip(texts, spans)]
        flat = await self._entries(info, [p for ps in pieces for p in ps], opts, request_id)
        out, at = [], 0
        for ps in pieces:
            group, at = flat[at : at + len(ps)], at + len(ps)
            if len(group) == 1:
                out.append(group[0])
                continue
            tokens = np.array([e.tokens for e in group])
            vector = retrieval.combine_windows(np.stack([e.vector for e in group]), tokens, info.normalize)
            out.append(CacheEntry(vector, int(tokens.sum()), False))
        return out

    async def _entries(
        self, info: ModelInfo, texts: list[str], opts: retrieval.Options, request_id: str
    ) -> list[CacheEntry]:
        """One entry per input: cached ones from the cache, the missing unique texts from the backend, once per
        (model, options, text) however many requests miss it at the same time."""
        prefix = retrieval.cache_prefix(opts, info)  # prompt and side; "" for plain requests
        return await self.lookup.entries(
            texts,
            lambda t: cache_key(info.name, info.fingerprint, prefix + t),
            lambda t: (info.name, info.fingerprint, prefix + t),
            lambda missing: self._infer(info, missing, opts, request_id),
        )

    async def embed_uncached(self, info: ModelInfo, texts: list[str]) -> None:
        """The backend path alone, cache bypassed (shadow copies measure the work, not the cache)."""
        await self._infer(info, texts, retrieval.Options(), "")

    async def _infer(
        self, info: ModelInfo, texts: list[str], opts: retrieval.Options, request_id: str
    ) -> dict[str, CacheEntry]:
        """Embed through the batcher (length-sorted, chunked, concurrent); failures become 503/504/500."""
        rows = [TextRow(t, opts.row_inputs) for t in texts]
        call = self.batcher.submit(info, rows, [len(t) for t in texts], self.call, request_id)
        entries = await self.admission.call(info, call)
        if info.backend != LOCAL:
            self.metrics.upstream_tokens.labels(info.backend, info.name).inc(sum(e.tokens for e in entries))
        return dict(zip(texts, entries, strict=True))
