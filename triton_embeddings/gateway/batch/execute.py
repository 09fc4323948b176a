"""One batch line through the gateway's own pipeline: the same validation, model resolution, serving and
rendering as the online endpoint, so a line's body (or its error) is byte for byte what the endpoint answers."""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from triton_embeddings.gateway.batch.jsonl import Request
from triton_embeddings.gateway.errors import APIError, ErrorKind
from triton_embeddings.gateway.http import wire
from triton_embeddings.gateway.http.errors import internal_error_response, validation_error
from triton_embeddings.gateway.http.protocol import EmbeddingRequest, RerankRequest
from triton_embeddings.gateway.http.registry import EMBEDDING, RERANK

RETRIED = (ErrorKind.OVERLOADED, ErrorKind.UPSTREAM_UNAVAILABLE, ErrorKind.UPSTREAM_TIMEOUT,
           ErrorKind.REQUEST_TIMEOUT)


@dataclass(frozen=True)
class Outcome:
    """A line's answer: status, body (JSON bytes), tokens, model, and whether it is worth another try."""

    status: int
    body: bytes
    tokens: int = 0
    model: str = ""
    retry: bool = False


def _json(body) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


async def _embeddings(state, body: dict, request_id: str) -> Outcome:
    req = EmbeddingRequest.model_validate(body)
    info = state.registry.resolve(req.model, EMBEDDING)
    inputs = wire.embeddings_input(req, info, state.settings, state.decoder)
    embedded = await state.embeddings.serve(info, inputs, request_id)
    return Outcome(200, _json(wire.embeddings_answer(req, info, embedded)), embedded.tokens, info.name)


async def _rerank(state, body: dict, request_id: str) -> Outcome:
    req = RerankRequest.model_validate(body)
    info = state.registry.resolve(req.model, RERANK)
    pairs = wire.rerank_input(req, state.settings)
    wire.check_rerank_options(req)
    scored = await state.rerank.serve(info, pairs, request_id)
    return Outcome(200, _json(wire.rerank_answer(req, pairs, scored)), scored.tokens, info.name)


ENDPOINTS = {"/v1/embeddings": _embeddings, "/v1/rerank": _rerank}


async def run_line(state, request: Request, request_id: str) -> Outcome:
    """Answer one line; any failure is its OpenAI error body (the 500 logged with the request id)."""
    try:
        return await ENDPOINTS[request.url](state, request.body, request_id)
    except ValidationError as e:  # as FastAPI reports a body it validates
        err = validation_error(RequestValidationError([{**x, "loc": ("body", *x["loc"])} for x in e.errors()]))
    except APIError as e:
        err = e
    except Exception as e:
        response = internal_error_response(request_id, e)
        return Outcome(response.status_code, bytes(response.body))
    return Outcome(err.status, _json(err.body()), retry=err.kind in RETRIED)


def output_line(line_id: str, request: Request, request_id: str, outcome: Outcome) -> bytes:
    """OpenAI's output (or error file) line."""
    response = {"status_code": outcome.status, "request_id": request_id, "body": orjson.Fragment(outcome.body)}
    return orjson.dumps({"id": line_id, "custom_id": request.custom_id, "response": response, "error": None})


def unrun_line(line_id: str, request: Request, code: str, message: str) -> bytes:
    """The error file's line for a request the batch never ran (cancelled or expired first)."""
    return orjson.dumps({"id": line_id, "custom_id": request.custom_id, "response": None,
                         "error": {"code": code, "message": message}})
