"""One `Backend` over several: the local Triton and the upstream APIs, each model served by exactly one.

The registry and the pipeline see one backend; each call goes to the backend that serves the
model. A name configured upstream wins over a local model or an alias of the same name (such as the
default alias `text-embedding-3-small`): the configuration says where that name's vectors come from.
"""

from __future__ import annotations

import asyncio

from triton_embeddings.gateway.backends.base import Backend, EmbedResult, ModelInfo, RerankModelInfo, RerankResult


class RoutedBackend:
    """The local backend plus upstream backends, routed by model name."""

    def __init__(self, local: Backend, upstreams: list[Backend]):
        self.local = local
        self.upstreams = upstreams
        self._owner: dict[str, Backend] = {m: b for b in upstreams for m in (b.models or {})}

    @property
    def models(self) -> dict[str, ModelInfo | RerankModelInfo] | None:
        """Every model; None only while nothing is known (the local backend undiscovered and no upstream)."""
        local = self.local.models
        if local is None and not self._owner:
            return None
        clash = set(local or {}) & set(self._owner)
        merged = {n: i for n, i in (local or {}).items() if n not in clash}
        for backend in self.upstreams:
            merged.update(backend.models or {})
        return merged

    @property
    def local_known(self) -> bool:
        """Whether the local models were discovered (else an unknown name may be a local model: 503, not 404)."""
        return self.local.models is not None

    def backend_for(self, model: str) -> Backend:
        return self._owner.get(model, self.local)

    async def start(self) -> None:
        await asyncio.gather(self.local.start(), *(b.start() for b in self.upstreams))

    async def close(self) -> None:
        await asyncio.gather(self.local.close(), *(b.close() for b in self.upstreams), return_exceptions=True)

    async def ready(self, names: list[str]) -> tuple[bool, str]:
        """The local models' readiness; upstream models do not gate it."""
        local = [n for n in names if n not in self._owner]
        if not local:
            return True, "ready"
        return await self.local.ready(local)

    async def embed(
        self, model: str, texts: list[str], request_id: str = "", options: dict[str, list[str]] | None = None
    ) -> EmbedResult:
        if options:
            return await self.backend_for(model).embed(model, texts, request_id, options)
        return await self.backend_for(model).embed(model, texts, request_id)

    async def windows(
        self, model: str, texts: list[str], prompt_names: list[str] | None = None, request_id: str = ""
    ) -> list[list[tuple[int, int, int]]]:
        return await self.backend_for(model).windows(model, texts, prompt_names, request_id)

    async def rerank(self, model: str, queries: list[str], documents: list[str], request_id: str = "") -> RerankResult:
        return await self.local.rerank(model, queries, documents, request_id)  # upstreams serve embeddings only

    def unknown_model_seen(self) -> None:
        self.local.unknown_model_seen()
