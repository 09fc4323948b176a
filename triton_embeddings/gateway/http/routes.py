"""Thin HTTP layer: routes, auth, and rendering; names resolve in `registry.py`, wire <-> domain is `wire.py`, the
work is in the pipeline (`app.state.embeddings`, `app.state.rerank`)."""

from __future__ import annotations

import asyncio

import orjson
from fastapi import APIRouter, Body, Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.background import BackgroundTask
from starlette.responses import Response

from triton_embeddings.gateway.errors import APIError, ErrorKind
from triton_embeddings.gateway.http import wire
from triton_embeddings.gateway.http.errors import error_response
from triton_embeddings.gateway.http.fast_route import FastBodyRoute
from triton_embeddings.gateway.http.openapi import ANY_ROUTE, AUTHENTICATED, INFERENCE, errors
from triton_embeddings.gateway.http.protocol import (
    EmbeddingRequest,
    EmbeddingResponse,
    ModelList,
    ModelWithPrompts,
    RerankRequest,
    RerankResponse,
    Status,
    TEIRerankItem,
    TEIRerankRequest,
)
from triton_embeddings.gateway.http.registry import EMBEDDING, RERANK, ModelRegistry
from triton_embeddings.gateway.pipeline.rerank import RerankServing
from triton_embeddings.gateway.teams import estimate
from triton_embeddings.gateway.teams.quotas import Teams, Usage

router = APIRouter()

ERRORS = errors(*INFERENCE)


Body200 = EmbeddingResponse | RerankResponse | list[TEIRerankItem] | ModelList | ModelWithPrompts | Status


def json_response(body: Body200) -> Response:
    """A 200 JSON body via orjson (numpy float32 rows are written as their shortest float32 repr)."""
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


def registry_of(request: Request) -> ModelRegistry:
    return request.app.state.registry


async def check_api_key(request: Request) -> None:
    """Bearer auth by the keys' sha256 (gateway/teams/keys.py); no keys configured: open. Sets `request.state`'s
    `key_id` (sha256 hex of the key; None while auth is off), `team` and `quota_key`."""
    teams: Teams = request.app.state.teams
    key = teams.authenticate(request.headers.get("authorization", ""), request.query_params.keys())
    request.state.key_id = key.id if key is not None else None
    request.state.team = teams.team_of(key)
    request.state.quota_key = key


async def check_metrics_key(request: Request) -> None:
    if request.app.state.settings.metrics_require_auth:
        await check_api_key(request)


def _api(method: str, path: str, *aliases: str, **kwargs):
    """An authenticated route at `path` and at `aliases` (the same handler, left out of the OpenAPI schema)."""
    kwargs["dependencies"] = [Depends(check_api_key)]

    def register(handler):
        for alias in aliases:
            router.add_api_route(alias, handler, methods=[method], include_in_schema=False, **kwargs)
        router.add_api_route(path, handler, methods=[method], **kwargs)
        return handler

    return register


def _label(request: Request, info) -> None:
    request.state.model_label = info.name  # bounded label for the request metrics


def _quota(request: Request, info, estimated: estimate.Estimate):
    """The request's quota held while it runs (gateway/teams/quotas.py): 400/429 when it cannot be admitted."""
    usage = Usage(request.state.team, info.name, info.kind, info.backend)
    return request.app.state.teams.hold(request.state, usage, estimated)


@_api("POST", "/v1/embeddings", "/embeddings", response_model=EmbeddingResponse, responses=ERRORS,
      route_class_override=FastBodyRoute)
async def create_embeddings(body: EmbeddingRequest, request: Request) -> Response:
    """OpenAI's `POST /v1/embeddings`."""
    state = request.app.state
    info = registry_of(request).resolve(body.model, EMBEDDING)
    _label(request, info)
    inputs = wire.embeddings_input(body, info, state.settings, state.decoder)
    embedded = await _embedded(request, info, inputs)
    response = json_response(wire.embeddings_answer(body, info, embedded))
    upstream = state.settings.upstreams.get(info.name)
    if upstream is not None and state.shadow.sampled(upstream.shadow):  # runs after the response has been sent
        response.background = BackgroundTask(state.shadow.run, info.name, upstream.shadow.model, inputs.texts)
    return response


async def _embedded(request: Request, info, inputs):
    max_length = 0 if inputs.options.chunk else info.max_seq_length  # windows: no cap per input
    async with _quota(request, info, estimate.of_texts(inputs.texts, max_length)) as held:
        embedded = await request.app.state.embeddings.serve(info, inputs, request.state.request_id)
        held.used(embedded.tokens)
    return embedded


@_api("POST", "/v1/rerank", "/v2/rerank", response_model=RerankResponse, responses=ERRORS,
      route_class_override=FastBodyRoute)
async def create_rerank(body: RerankRequest, request: Request) -> Response:
    """Rerank documents against a query, in the Cohere/Jina shape (Cohere's v1 and v2 clients, Jina's API)."""
    return await _rerank_cohere(request, body)


async def _rerank_cohere(request: Request, body: RerankRequest) -> Response:
    info = registry_of(request).resolve(body.model, RERANK)
    _label(request, info)
    service: RerankServing = request.app.state.rerank
    pairs = wire.rerank_input(body, request.app.state.settings)
    wire.check_rerank_options(body)
    scored = await _scored(request, service, info, pairs)
    return json_response(wire.rerank_answer(body, pairs, scored))


async def _scored(request: Request, service: RerankServing, info, pairs):
    async with _quota(request, info, estimate.of_pairs(pairs.query, pairs.documents, info.max_seq_length)) as held:
        scored = await service.serve(info, pairs, request.state.request_id)
        held.used(scored.tokens)
    return scored


@_api(
    "POST", "/rerank", response_model=RerankResponse | list[TEIRerankItem], responses=ERRORS,
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
        {"$ref": "#/components/schemas/RerankRequest"}, TEIRerankRequest.model_json_schema()]}}}}},
)
async def rerank_any_shape(request: Request, body: dict = Body(...)) -> Response:  # noqa: B008
    """TEI's shape when the body has `texts`, else the Cohere/Jina shape."""
    if "texts" not in body:
        return await _rerank_cohere(request, _validated(RerankRequest, body))
    tei = _validated(TEIRerankRequest, body)
    registry = registry_of(request)
    info = registry.resolve(tei.model, RERANK) if tei.model else registry.default_reranker()
    _label(request, info)
    pairs = wire.tei_input(tei, request.app.state.settings)
    scored = await _scored(request, request.app.state.rerank, info, pairs)
    return json_response(wire.tei_answer(tei, scored))


def _validated(model: type[BaseModel], body: dict):
    """Validate a body read as a dict; errors answer like FastAPI's own (OpenAI-shaped 400 naming the field)."""
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in e.errors()]) from None


@_api("GET", "/v1/models", "/models", response_model=ModelList, responses=errors(*AUTHENTICATED))
async def list_models(request: Request) -> Response:
    """Every served model plus its aliases."""
    return json_response(registry_of(request).list())


@_api("GET", "/v1/models/{model_id:path}", "/models/{model_id:path}", response_model=ModelWithPrompts,
      responses=errors(*AUTHENTICATED, 404))
async def get_model(model_id: str, request: Request) -> Response:
    """One model or alias; unknown: 404 `model_not_found`."""
    return json_response(registry_of(request).get(model_id))


@router.get("/health", response_model=Status, responses=errors(*ANY_ROUTE))
async def health() -> Response:
    """Liveness: the process answers; Triton is not called."""
    return json_response({"status": "ok"})


@router.get("/ready", response_model=Status, responses=errors(*ANY_ROUTE))
async def ready(request: Request) -> Response:
    """Readiness: Triton live and every configured model ready."""
    if request.app.state.draining:
        ok, reason = False, "shutting down"
    else:
        ok, reason = await registry_of(request).ready()
    if ok:
        return json_response({"status": "ready"})
    err = APIError(ErrorKind.UPSTREAM_UNAVAILABLE, f"Not ready: {reason}.")
    return error_response(err, request.app.state.settings.retry_after_s)


class PrometheusText(Response):
    """Prometheus' text format 0.0.4, the one Triton's metrics port serves (starlette adds the charset)."""

    media_type = "text/plain; version=0.0.4"


@router.get("/metrics", dependencies=[Depends(check_metrics_key)], response_class=PrometheusText,
            responses={200: {"description": "Prometheus text exposition (format 0.0.4), not JSON"},
                       **errors(*AUTHENTICATED, by_reference=True)})  # 400/401: metrics_require_auth
async def metrics(request: Request) -> Response:
    """Prometheus exposition: the gateway's metrics and Triton's, merged."""
    body = await asyncio.to_thread(request.app.state.metrics.exposition)
    return PrometheusText(body)
