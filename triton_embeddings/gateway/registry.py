"""The served models: names, aliases, the default model, resolution, listing and readiness."""

from __future__ import annotations

from triton_embeddings.gateway.backend import Backend, ModelInfo
from triton_embeddings.gateway.errors import APIError, ErrorKind
from triton_embeddings.gateway.protocol import ModelList, ModelWithPrompts, model_card
from triton_embeddings.gateway.settings import DEFAULT_TARGET, Settings

OWNER = "triton-embeddings"


class ModelRegistry:
    """What the backend serves, under its own names and the configured aliases."""

    def __init__(self, settings: Settings, backend: Backend):
        self.settings = settings
        self.backend = backend

    def models(self) -> dict[str, ModelInfo]:
        """The served models; never discovered yet (backend down since the start): 503."""
        models = self.backend.models
        if models is None:
            raise APIError(ErrorKind.UPSTREAM_UNAVAILABLE, "The inference server is not reachable right now.")
        return models

    def default_model(self, models: dict[str, ModelInfo]) -> str | None:
        """The configured default if served, else the first model by name."""
        if self.settings.default_model:
            return self.settings.default_model if self.settings.default_model in models else None
        return min(models) if models else None

    def aliases(self, models: dict[str, ModelInfo]) -> dict[str, str]:
        """Alias -> served model, for the aliases whose target is served (served names win over aliases)."""
        default = self.default_model(models)
        out = {}
        for alias, target in self.settings.model_aliases.items():
            target = default if target == DEFAULT_TARGET else target
            if target in models and alias not in models:
                out[alias] = target
        return out

    def resolve(self, name: str) -> ModelInfo:
        """A served model or alias; unknown: 404 `model_not_found`."""
        models = self.models()
        target = name if name in models else self.aliases(models).get(name)
        if target is None:
            self.backend.unknown_model_seen()  # it may have been loaded since the last look
            raise APIError(
                ErrorKind.MODEL_NOT_FOUND,
                f"The model `{name}` does not exist. See GET /v1/models for the served models.",
                param="model",
            )
        return models[target]

    def list(self) -> ModelList:
        """Every served model, then its aliases."""
        models = self.models()
        data = [model_card(m.name, m.created, OWNER) for m in sorted(models.values(), key=lambda m: m.name)]
        for alias, target in sorted(self.aliases(models).items()):
            data.append(model_card(alias, models[target].created, OWNER))
        return {"object": "list", "data": data}

    def get(self, name: str) -> ModelWithPrompts:
        """One model or alias, under the name asked for, with the prompts `input_type` can name."""
        info = self.resolve(name)
        card: ModelWithPrompts = {**model_card(name, info.created, OWNER), "prompts": dict(info.prompts),
                                  "default_prompt_name": info.default_prompt_name or None}
        return card

    async def ready(self) -> tuple[bool, str]:
        """Backend live and every configured (or, if none configured, every discovered) model ready."""
        names = list(self.settings.models or (self.backend.models or {}))
        if not names:
            return False, "no embedding model is served"
        return await self.backend.ready(names)
