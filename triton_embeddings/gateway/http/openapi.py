"""The error statuses each route documents, and the document's one correction to FastAPI's generator."""

from __future__ import annotations

from fastapi import FastAPI

from triton_embeddings.gateway.http.protocol import ErrorResponse

RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "required": True,
                               "schema": {"type": "integer"}}}
# What any request can be answered (the middleware, http/middleware.py and server.py): a body over the cap (by
# its Content-Length, whatever the method), a bug, and a connection past `max_connections`.
ANY_ROUTE = (413, 500, 503)
AUTHENTICATED = (*ANY_ROUTE, 400, 401)  # 400: an API key in the URL; 401: no key or an unknown one
INFERENCE = (*AUTHENTICATED, 404, 429, 504)


def errors(*statuses: int, by_reference: bool = False) -> dict[int | str, dict]:
    """FastAPI `responses` for these error statuses: OpenAI's error body; 429 and 503 carry `Retry-After`.

    `by_reference`: for a route whose own media type is not JSON (FastAPI would give its error bodies that type),
    the JSON body is named by reference (the JSON routes register `ErrorResponse`)."""
    body = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}} \
        if by_reference else {"model": ErrorResponse}
    return {s: {**body, **({"headers": RETRY_AFTER} if s in (429, 503) else {})} for s in sorted(set(statuses))}


def without_422(app: FastAPI) -> None:
    """FastAPI documents a 422 on every route with parameters; the gateway answers bad input 400 instead
    (http/errors.py), so the document lists no 422 and no schema of FastAPI's validation error."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            spec = generate()
            for operations in spec.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            schemas = spec.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
