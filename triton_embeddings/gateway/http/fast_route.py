"""A leaner `APIRoute` for the hot POST routes (`/v1/embeddings`, `/v1/rerank`).

FastAPI's own handler solves the dependency graph, decodes the JSON with the standard library, validates the
resulting dicts and re-serializes the response; on a near-free model that plumbing costs more CPU than the
rest of the request. Here the route's dependencies (the API-key check, each a coroutine of the request) run in
order, the body is validated straight from its bytes by pydantic-core, and the endpoint is called with it.
The OpenAPI document is still FastAPI's, from the endpoint's own signature; bad bodies raise the
`RequestValidationError`s FastAPI raises, so the same handlers answer them (http/errors.py).
"""

from __future__ import annotations

import json
from typing import get_type_hints

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.requests import Request


def _is_json(content_type: str | None) -> bool:
    """FastAPI's rule: application/json or application/*+json (parameters ignored)."""
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    main, _, sub = kind.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


def parse_body(model: type[BaseModel], content_type: str | None, raw: bytes) -> BaseModel:
    """The request body as `model`, or the RequestValidationError FastAPI would raise for it."""
    if not raw:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    if not _is_json(content_type):
        raise RequestValidationError([{"type": "model_attributes_type", "loc": ("body",),
                                       "msg": "Input should be a valid dictionary or object to extract fields from",
                                       "input": None}])
    try:
        return model.model_validate_json(raw)
    except ValidationError as e:
        errors = e.errors(include_url=False)
    if errors and errors[0]["type"] == "json_invalid":
        # What pydantic-core's strict parser refuses, the standard library may take (NaN, lone surrogates, which
        # the pipeline answers with its own 400): then FastAPI's own way, decode first, validate the objects.
        try:
            decoded = json.loads(raw)
        except ValueError as decode:
            raise RequestValidationError([{"type": "json_invalid", "loc": ("body", getattr(decode, "pos", 0)),
                                           "msg": "JSON decode error", "input": {}}]) from None
        try:
            return model.model_validate(decoded)
        except ValidationError as e:
            errors = e.errors(include_url=False)
    raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in errors])


class FastBodyRoute(APIRoute):
    """An APIRoute whose endpoint takes `request: Request` and one pydantic body model; see the module doc."""

    def get_route_handler(self):
        hints = get_type_hints(self.endpoint)
        name, model = next((n, t) for n, t in hints.items() if isinstance(t, type) and issubclass(t, BaseModel))
        dependencies = [d.dependency for d in self.dependencies]
        endpoint = self.endpoint

        async def handler(request: Request):
            for dependency in dependencies:
                await dependency(request)
            body = parse_body(model, request.headers.get("content-type"), await request.body())
            return await endpoint(request=request, **{name: body})

        return handler
