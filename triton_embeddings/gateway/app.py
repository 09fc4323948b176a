"""FastAPI app factory, where the three rooms meet: the backends, the pipeline's tasks and the HTTP room's
registry, middleware and routes, started and stopped by the lifespan."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from triton_embeddings.gateway.backends.base import Backend
from triton_embeddings.gateway.backends.routing import RoutedBackend
from triton_embeddings.gateway.backends.triton import TritonBackend
from triton_embeddings.gateway.backends.upstream import make_upstreams
from triton_embeddings.gateway.batch.routes import router as batch_router
from triton_embeddings.gateway.batch.runner import Runner
from triton_embeddings.gateway.batch.store import make_store
from triton_embeddings.gateway.http.errors import install_error_handlers
from triton_embeddings.gateway.http.middleware import RequestContextMiddleware, setup_logging
from triton_embeddings.gateway.http.openapi import without_422
from triton_embeddings.gateway.http.registry import ModelRegistry
from triton_embeddings.gateway.http.routes import router
from triton_embeddings.gateway.http.token_ids import TokenDecoder, load_cl100k
from triton_embeddings.gateway.metrics import GatewayMetrics
from triton_embeddings.gateway.pipeline.cache import Cache, make_cache
from triton_embeddings.gateway.pipeline.embeddings import EmbeddingServing
from triton_embeddings.gateway.pipeline.rerank import RerankServing
from triton_embeddings.gateway.pipeline.serving import make_batcher
from triton_embeddings.gateway.pipeline.shadow import Shadow
from triton_embeddings.gateway.settings import DEFAULT_BATCH_STORE, Settings
from triton_embeddings.gateway.teams.middleware import RateLimitHeaders
from triton_embeddings.gateway.teams.quotas import Teams

__all__ = ["create_app", "setup_logging"]  # setup_logging: for __main__ and local/serve.py
log = logging.getLogger("gateway")


async def _load_decoder(settings: Settings) -> TokenDecoder:
    if settings.tiktoken_file is not None:  # configured: a broken file is a startup error
        return TokenDecoder(await asyncio.to_thread(load_cl100k, settings.tiktoken_file))
    try:
        enc = await asyncio.wait_for(asyncio.to_thread(load_cl100k, None), settings.tiktoken_load_timeout_s)
        return TokenDecoder(enc)
    except Exception as e:
        log.warning("token-id inputs disabled: %s", e)
        return TokenDecoder(None)


def _make_backend(settings: Settings) -> Backend:
    return TritonBackend(
        settings.triton_grpc_url,
        timeout_s=settings.triton_timeout_s,
        ready_timeout_s=settings.ready_timeout_s,
        refresh_interval_s=settings.refresh_interval_s,
        only_models=settings.models,
        repository=settings.model_repository,
        unavailable_hold_s=settings.unavailable_hold_s,
    )


def _route_upstreams(settings: Settings, local: Backend, metrics: GatewayMetrics) -> Backend:
    """The local backend alone, or routed together with the configured upstream APIs."""
    if not settings.upstreams:
        return local
    return RoutedBackend(local, make_upstreams(settings.upstreams, metrics))


def _make_cache(settings: Settings) -> Cache:
    return make_cache(
        settings.cache,
        size=settings.cache_size,
        ttl_s=settings.cache_ttl_s,
        redis_url=settings.redis_url.get_secret_value() if settings.redis_url else None,
        redis_timeout_s=settings.redis_timeout_s,
        redis_retry_s=settings.redis_retry_s,
    )


def _lifespan(settings: Settings, backend: Backend | None, cache: Cache | None, decoder: TokenDecoder | None):
    """Start the backend, cache and decoder; put the registry, the decoder and the tasks on `app.state`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        be = _route_upstreams(settings, backend or _make_backend(settings), app.state.metrics)
        ca = cache or _make_cache(settings)
        ca.on_error = app.state.metrics.cache_errors.inc
        dec = decoder or await _load_decoder(settings)
        await be.start()
        await app.state.teams.start()
        app.state.registry = ModelRegistry(settings, be)
        app.state.decoder = dec
        batcher = make_batcher(settings, app.state.metrics)
        app.state.embeddings = EmbeddingServing(settings, be, batcher, ca, app.state.metrics)
        app.state.rerank = RerankServing(settings, be, batcher, ca, app.state.metrics)
        app.state.shadow = Shadow(app.state.registry.resolve_local, app.state.embeddings.embed_uncached,
                                  app.state.metrics, settings.shadow_max_in_flight)
        log.info(
            "gateway ready: triton=%s upstreams=%s cache=%s token-ids=%s auth=%s",
            settings.triton_grpc_url,
            {m: c.backend_name for m, c in settings.upstreams.items()} or "none",
            ca.name,
            "on" if dec.available else "off",
            "on" if app.state.teams.store.auth_on else "off",
        )
        runner = _start_batch(app, settings)
        try:
            yield
        finally:
            if runner is not None:
                await runner.stop()
                await app.state.batch_store.close()
            await be.close()
            await ca.close()
            await app.state.teams.close()

    return lifespan


def _start_batch(app: FastAPI, settings: Settings) -> Runner | None:
    """The Batch API's store on `app.state.batch_store` (None when it is off) and its runner, started."""
    app.state.batch_store = None
    if not settings.batch_enabled:
        return None
    url = settings.batch_store.get_secret_value() if settings.batch_store else DEFAULT_BATCH_STORE
    app.state.batch_store = make_store(url)
    runner = Runner(app.state, app.state.batch_store, settings, app.state.metrics)
    runner.start()
    return runner


def create_app(
    settings: Settings | None = None,
    *,
    backend: Backend | None = None,
    cache: Cache | None = None,
    decoder: TokenDecoder | None = None,
) -> FastAPI:
    """Build the gateway app; `backend`, `cache` and `decoder` can be injected (unit tests)."""
    settings = settings or Settings()
    metrics = GatewayMetrics(settings.triton_metrics_url, settings.triton_metrics_timeout_s)
    app = FastAPI(
        title="triton-embeddings gateway",
        summary="OpenAI-compatible embeddings API over Triton Inference Server.",
        version="0.1.0",
        lifespan=_lifespan(settings, backend, cache, decoder),
        # FastAPI's built-in OpenTelemetry is off: it looked up the global providers on every request (a
        # sixth of the gateway's CPU under load); the gateway's own metrics are Prometheus (/metrics).
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.settings = settings
    app.state.draining = False  # set on SIGTERM by server.GatewayServer: /ready answers 503
    app.state.metrics = metrics
    app.state.teams = Teams(settings, metrics)  # the keys (hashed), their quotas; gateway/teams/
    install_error_handlers(app, settings.retry_after_s)
    app.include_router(router)
    app.add_middleware(RateLimitHeaders, teams=app.state.teams, metrics=metrics)
    app.include_router(batch_router)
    app.add_middleware(RequestContextMiddleware, settings=settings, metrics=metrics)
    without_422(app)
    return app
