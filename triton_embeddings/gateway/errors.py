"""The error table of the gateway: every kind of error the client can be answered, and every failure of a
call mapped to one of them. The HTTP room renders them (http/errors.py); no other module picks a status.

Two maps, as TEI's two `From` impls: a failure (a backend's typed error, a request past its deadline, a
shared call abandoned) -> an `ErrorKind` with its message (`FAILURES`); an `ErrorKind` -> the HTTP status,
OpenAI `type`, `code` and whether the answer carries `Retry-After` (`ErrorKind` itself).
"""

from __future__ import annotations

import enum

from triton_embeddings.gateway.backends.base import BackendTimeout, BackendUnavailable, BadInput


class ErrorKind(enum.Enum):
    """Each kind of error: (HTTP status, OpenAI `type`, default `code`, Retry-After); kinds may share a code."""

    INVALID_REQUEST = (400, "invalid_request_error", None, False)
    CONTEXT_LENGTH = (400, "invalid_request_error", "context_length_exceeded", False)
    TOO_MANY_TOKENS = (400, "invalid_request_error", "max_tokens_per_request", False)
    TOKEN_IDS_UNSUPPORTED = (400, "invalid_request_error", "token_ids_unsupported", False)
    INVALID_API_KEY = (401, "invalid_request_error", "invalid_api_key", False)
    NOT_FOUND = (404, "invalid_request_error", "not_found", False)
    MODEL_NOT_FOUND = (404, "invalid_request_error", "model_not_found", False)
    METHOD_NOT_ALLOWED = (405, "invalid_request_error", "method_not_allowed", False)
    CONFLICT = (409, "invalid_request_error", None, False)  # e.g. cancelling a batch that has finished
    BODY_TOO_LARGE = (413, "invalid_request_error", "request_too_large", False)
    OVERLOADED = (429, "rate_limit_error", "rate_limit_exceeded", True)
    INTERNAL = (500, "server_error", "internal_error", False)
    UPSTREAM_UNAVAILABLE = (503, "server_error", "service_unavailable", True)
    UPSTREAM_TIMEOUT = (504, "server_error", "timeout", False)  # one backend call ran past its deadline
    REQUEST_TIMEOUT = (504, "server_error", "timeout", False)  # the whole request ran past its deadline
    # A key's quota (gateway/teams/): OpenAI's 429 names the limit that refused in `type`.
    RATE_LIMIT_REQUESTS = (429, "requests", "rate_limit_exceeded", True)
    RATE_LIMIT_TOKENS = (429, "tokens", "rate_limit_exceeded", True)
    TOKENS_OVER_QUOTA = (400, "invalid_request_error", "tokens_exceed_quota", False)  # could never be admitted
    KEY_IN_URL = (400, "invalid_request_error", "api_key_in_url", False)

    def __new__(cls, status: int, type_: str, code: str | None, retry_after: bool) -> ErrorKind:
        kind = object.__new__(cls)
        kind._value_ = len(cls.__members__)  # distinct values: kinds sharing a status and code stay distinct
        kind.status, kind.type, kind.code, kind.retry_after = status, type_, code, retry_after
        return kind


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
        self.code = code if code is not None else kind.code
        self.headers = dict(headers or {})

    @property
    def status(self) -> int:
        return self._status or self.kind.status

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind.type, "param": self.param, "code": self.code}}


class DeadlineExceeded(Exception):
    """The whole request was not answered within its deadline (queueing included); not a backend error."""

    kind = "deadline"  # the `kind` label of gateway_triton_errors_total


class StoreUnavailable(Exception):
    """The batch store (SQLite file, Redis) failed a call."""


class SharedCallCancelled(Exception):
    """The request computing a shared key was cancelled before it finished."""


# Each failure of a call -> the client's error (most specific first). {server}: who failed. A failure not
# listed (a plain `BackendError`, a bug) is the generic 500, logged with the request id.
FAILURES: tuple[tuple[type[Exception], ErrorKind, str], ...] = (
    (BackendUnavailable, ErrorKind.UPSTREAM_UNAVAILABLE, "{server} is not reachable right now; retry shortly."),
    (BackendTimeout, ErrorKind.UPSTREAM_TIMEOUT, "{server} did not answer in time."),
    (BadInput, ErrorKind.INVALID_REQUEST, "{server} rejected the input (HTTP {status}{code})."),
    (DeadlineExceeded, ErrorKind.REQUEST_TIMEOUT, "The request was not answered within {deadline} s; retry shortly."),
    (SharedCallCancelled, ErrorKind.UPSTREAM_UNAVAILABLE, "The inference server did not answer; retry shortly."),
    (StoreUnavailable, ErrorKind.UPSTREAM_UNAVAILABLE, "The batch store is not reachable right now; retry shortly."),
)


def client_error(failure: Exception, server: str, deadline_s: float | None) -> APIError | None:
    """The client's error for a failure of a call, by `FAILURES`; None: not listed (the generic 500)."""
    for failed, kind, template in FAILURES:
        if isinstance(failure, failed):
            code = getattr(failure, "code", "")
            message = template.format(server=server, deadline=f"{deadline_s:g}" if deadline_s else "-",
                                      status=getattr(failure, "status", ""), code=f", {code}" if code else "")
            return APIError(kind, message, param="input" if isinstance(failure, BadInput) else None)
    return None
