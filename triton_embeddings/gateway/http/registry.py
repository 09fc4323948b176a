"""The served models: names, aliases, the default model, resolution, listing and readiness."""

from __future__ import annotations

from triton_embeddings.gateway.backends.base import LOCAL, Backend, ModelInfo, RerankModelInfo
from triton_embeddings.gateway.errors import APIError, ErrorKind
from triton_embeddings.gateway.http.protocol import ModelList, ModelWithPrompts, model_card
from triton_embeddings.gateway.settings import DEFAULT_TARGET, Settings

OWNER = "triton-embeddings"
EMBEDDING, RERANK = ModelInfo.kind, RerankModelInfo.kind
ROUTE_OF = {EMBEDDING: "POST /v1/embeddings", RERANK: "POST /v1/rerank"}
Served = ModelInfo | RerankModelInfo


def owner(info: Served) -> str:
    """`owned_by`: this project for local models, the upstream's name for forwarded ones."""
    return OWNER if info.backend == LOCAL else info.backend


class ModelRegistry:
    """What the backend serves, under its own names and the configured aliases."""

    def __init__(self, settings: Settings, backend: Backend):
        self.settings = settings
        self.backend = backend

    def models(self) -> dict[str, Served]:
        """The served models; never discovered yet (backend down since the start): 503."""
        models = self.backend.models
        if models is None:
            raise APIError(ErrorKind.UPSTREAM_UNAVAILABLE, "The inference server is not reachable right now.")
        return models

    def default_model(self, models: dict[str, Served]) -> str | None:
        """The configured default if served, else the first embedding model by name."""
        if self.settings.default_model:
            return self.settings.default_model if self.settings.default_model in models else None
        return min((n for n, m in models.items() if m.kind == EMBEDDING), default=None)

    def default_reranker(self) -> RerankModelInfo:
        """The first rerank model by name, for requests that name none (the TEI shape); none served: 404."""
        name = min((n for n, m in self.models().items() if m.kind == RERANK), default=None)
        if name is None:
            raise APIError(ErrorKind.MODEL_NOT_FOUND, "No rerank model is served. See GET /v1/models.", param="model")
        return self.models()[name]

    def aliases(self, models: dict[str, Served]) -> dict[str, str]:
        """Alias -> served model, for the aliases whose target is served (served names win over aliases)."""
        default = self.default_model(models)
        out = {}
        for alias, target in self.settings.model_aliases.items():
            target = default if target == DEFAULT_TARGET else target
            if target in models and alias not in models:
                out[alias] = target
        return out

    def resolve(self, name: str, kind: str | None = None) -> Served:
        """A served model or alias of `kind` (any when None); unknown: 404 `model_not_found`
        (503 while the local models are unknown); of another kind: 400 on `model`."""
        models = self.models()
        target = name if name in models else self.aliases(models).get(name)
        if target is None:
            self.backend.unknown_model_seen()  # it may have been loaded since the last look
            if not self.backend.local_known:  # upstreams known, Triton not reached yet
                raise APIError(ErrorKind.UPSTREAM_UNAVAILABLE, "The inference server is not reachable right now.")
            raise APIError(
                ErrorKind.MODEL_NOT_FOUND,
                f"The model `{name}` does not exist. See GET /v1/models for the served models.",
                param="model",
            )
        info = models[target]
        if kind is not None and info.kind != kind:
            raise APIError(
                ErrorKind.INVALID_REQUEST,
                f"The model `{name}` is a{'n' if info.kind == EMBEDDING else ''} {info.kind} model; "
                f"use {ROUTE_OF[info.kind]} for it.",
                param="model",
            )
        return info

    def resolve_local(self, name: str) -> ModelInfo:
        """An embedding model (or alias) the local backend serves; an upstream model is not local: 404."""
        info = self.resolve(name, EMBEDDING)
        if info.backend != LOCAL:
            raise APIError(ErrorKind.MODEL_NOT_FOUND, f"The model `{name}` is not a local model.", param="model")
        return info

    def list(self) -> ModelList:
        """Every served model, then its aliases, each with its kind (embedding or rerank); upstream models are
        owned by their upstream's name."""
        models = self.models()
        data = [model_card(m.name, m.created, owner(m), m.kind) for m in sorted(models.values(), key=lambda m: m.name)]
        for alias, target in sorted(self.aliases(models).items()):
            data.append(model_card(alias, models[target].created, owner(models[target]), models[target].kind))
        return {"object": "list", "data": data}

    def get(self, name: str) -> ModelWithPrompts:
        """One model or alias, under the name asked for; an embedding model with the prompts `input_type` can
        name."""
        info = self.resolve(name)
        card: ModelWithPrompts = {**model_card(name, info.created, owner(info), info.kind)}
        if isinstance(info, ModelInfo):
            card.update(prompts=dict(info.prompts), default_prompt_name=info.default_prompt_name or None)
        return card

    async def ready(self) -> tuple[bool, str]:
        """Backend live and every configured (or, if none configured, every discovered) model ready."""
        names = list(self.settings.models or (self.backend.models or {}))
        if not names:
            return False, "no model is served"
        return await self.backend.ready(names)
