"""The FastAPI handlers that answer every error OpenAI-shaped, rendered from the error table (gateway/errors.py)."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from triton_embeddings.gateway.errors import APIError, ErrorKind, StoreUnavailable, client_error

log = logging.getLogger("gateway")


def error_response(err: APIError, retry_after_s: int = 1) -> Response:
    """Render an `APIError` as a JSON response (adds `Retry-After` where the kind is retryable)."""
    headers = dict(err.headers)
    if err.kind.retry_after:
        headers.setdefault("Retry-After", str(retry_after_s))
    return Response(orjson.dumps(err.body()), status_code=err.status, headers=headers, media_type="application/json")


def internal_error_response(request_id: str, exc: BaseException | None = None) -> Response:
    """The generic 500, the only place it is rendered: no exception text, only the request id to quote.

    `exc`, when given, is logged with its traceback (the log, never the client, gets the details).
    """
    if exc is not None:
        log.error("unexpected error (request id %s)", request_id, exc_info=exc)
    message = f"The server had an error while processing your request (request id {request_id})."
    return error_response(APIError(ErrorKind.INTERNAL, message))


def _type_name(value: Any) -> str:
    return {
        str: "string",
        int: "integer",
        float: "number",
        bool: "boolean",
        list: "array",
        dict: "object",
    }.get(type(value), "null" if value is None else type(value).__name__)


def validation_error(exc: RequestValidationError) -> APIError:
    """Turn FastAPI's validation errors into one OpenAI-style 400 naming the first bad parameter."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "Invalid request.", "type": ""}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") in ("json_invalid", "json_type"):
        return APIError(
            ErrorKind.INVALID_REQUEST,
            "We could not parse the JSON body of your request. The API expects a JSON object "
            "(Content-Type: application/json).",
        )
    if first.get("type") == "model_attributes_type" or (first.get("type") == "model_type" and not loc):
        return APIError(ErrorKind.INVALID_REQUEST, "The request body must be a JSON object.")
    if first.get("type") == "missing" and loc:
        return APIError(ErrorKind.INVALID_REQUEST, f"Missing required parameter: '{loc[0]}'.", param=loc[0])
    param = loc[0] if loc else None
    if param == "input":
        return APIError(
            ErrorKind.INVALID_REQUEST,
            "'input' must be a string, an array of strings, an array of integers (token ids), "
            "or an array of arrays of integers.",
            param="input",
        )
    if param is not None:
        got = _type_name(first.get("input"))
        return APIError(
            ErrorKind.INVALID_REQUEST,
            f"Invalid value for '{param}' ({got}): {first.get('msg')}.",
            param=param,
        )
    return APIError(ErrorKind.INVALID_REQUEST, f"Invalid request: {first.get('msg')}.")


def request_id_of(request: Request) -> str:
    return getattr(request.state, "request_id", "") or "-"


def http_error(request: Request, exc: StarletteHTTPException) -> APIError | None:
    """The framework's own HTTP errors as OpenAI errors; None for a 5xx (answered as the generic 500)."""
    where = f"({request.method} {request.url.path})"
    if exc.status_code == 404:
        return APIError(ErrorKind.NOT_FOUND, f"Invalid URL {where}.")
    if exc.status_code == 405:
        return APIError(ErrorKind.METHOD_NOT_ALLOWED, f"Method not allowed {where}.", headers=exc.headers)
    if exc.status_code == 413:
        return APIError(ErrorKind.BODY_TOO_LARGE, "Request body too large.")
    if 400 <= exc.status_code < 500:
        return APIError(ErrorKind.INVALID_REQUEST, str(exc.detail), status=exc.status_code)
    log.error("HTTP %s from the framework: %s", exc.status_code, exc.detail)
    return None


def install_error_handlers(app: FastAPI, retry_after_s: int = 1) -> None:
    """Make every error the app can answer OpenAI-shaped."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> Response:
        return error_response(exc, retry_after_s)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        return error_response(validation_error(exc), retry_after_s)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        err = http_error(request, exc)
        return internal_error_response(request_id_of(request)) if err is None else error_response(err, retry_after_s)

    @app.exception_handler(StoreUnavailable)
    async def _store(request: Request, exc: StoreUnavailable) -> Response:  # the batch store: 503
        return error_response(client_error(exc, "", None), retry_after_s)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        return internal_error_response(request_id_of(request), exc)
