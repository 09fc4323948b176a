"""The one error type, its status table, and the FastAPI handlers that answer OpenAI-shaped errors."""

from __future__ import annotations

import enum
import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

log = logging.getLogger("gateway")


class ErrorKind(enum.Enum):
    """Each kind of failure: (HTTP status, OpenAI `type`, default `code`)."""

    INVALID_REQUEST = (400, "invalid_request_error", None)
    CONTEXT_LENGTH = (400, "invalid_request_error", "context_length_exceeded")
    TOO_MANY_TOKENS = (400, "invalid_request_error", "max_tokens_per_request")
    TOKEN_IDS_UNSUPPORTED = (400, "invalid_request_error", "token_ids_unsupported")
    INVALID_API_KEY = (401, "invalid_request_error", "invalid_api_key")
    NOT_FOUND = (404, "invalid_request_error", "not_found")
    MODEL_NOT_FOUND = (404, "invalid_request_error", "model_not_found")
    METHOD_NOT_ALLOWED = (405, "invalid_request_error", "method_not_allowed")
    BODY_TOO_LARGE = (413, "invalid_request_error", "request_too_large")
    OVERLOADED = (429, "rate_limit_error", "rate_limit_exceeded")
    INTERNAL = (500, "server_error", "internal_error")
    UPSTREAM_UNAVAILABLE = (503, "server_error", "service_unavailable")
    UPSTREAM_TIMEOUT = (504, "server_error", "timeout")

    @property
    def status(self) -> int:
        return self.value[0]


# Kinds whose answer carries `Retry-After`.
RETRYABLE = {ErrorKind.OVERLOADED, ErrorKind.UPSTREAM_UNAVAILABLE}


class APIError(Exception):
    """An error answered to the client as `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        status: int | None = None,
    ):
        super().__init__(message)
        self.kind = kind
        self._status = status
        self.message = message
        self.param = param
        self.code = code if code is not None else kind.value[2]
        self.headers = dict(headers or {})

    @property
    def status(self) -> int:
        return self._status or self.kind.status

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind.value[1],
                "param": self.param,
                "code": self.code,
            }
        }


def error_response(err: APIError, retry_after_s: int = 1) -> Response:
    """Render an `APIError` as a JSON response (adds `Retry-After` where the kind is retryable)."""
    headers = dict(err.headers)
    if err.kind in RETRYABLE:
        headers.setdefault("Retry-After", str(retry_after_s))
    return Response(orjson.dumps(err.body()), status_code=err.status, headers=headers, media_type="application/json")


def internal_error(request_id: str) -> APIError:
    """The generic 500: no exception text, only the request id to quote."""
    return APIError(
        ErrorKind.INTERNAL,
        f"The server had an error while processing your request (request id {request_id}).",
    )


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
    if first.get("type") == "model_attributes_type":
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
        where = f"({request.method} {request.url.path})"
        if exc.status_code == 404:
            err = APIError(ErrorKind.NOT_FOUND, f"Invalid URL {where}.")
        elif exc.status_code == 405:
            err = APIError(ErrorKind.METHOD_NOT_ALLOWED, f"Method not allowed {where}.", headers=exc.headers)
        elif exc.status_code == 413:
            err = APIError(ErrorKind.BODY_TOO_LARGE, "Request body too large.")
        elif 400 <= exc.status_code < 500:
            err = APIError(ErrorKind.INVALID_REQUEST, str(exc.detail), status=exc.status_code)
        else:
            log.error("HTTP %s from the framework: %s", exc.status_code, exc.detail)
            err = internal_error(request_id_of(request))
        return error_response(err, retry_after_s)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        rid = request_id_of(request)
        log.exception("unexpected error (request id %s)", rid)
        return error_response(internal_error(rid), retry_after_s)
