"""Wire types mirroring OpenAI's embeddings and models API types.

The request is a pydantic model (validated). The responses are TypedDicts: FastAPI documents them like
models, the code builds them as plain dicts (no per-object cost on 2048-input responses) and orjson writes
them with numpy rows as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from typing_extensions import TypedDict

# Strict types: a JSON `true` or `"1"` is not a token id, and `1` is not a string.
EmbeddingInput = Union[StrictStr, list[StrictStr], list[StrictInt], list[list[StrictInt]]]  # noqa: UP007


class EmbeddingRequest(BaseModel):
    """Body of `POST /v1/embeddings` (OpenAI's `EmbeddingCreateParams`); unknown fields are accepted."""

    model_config = ConfigDict(extra="allow")

    input: EmbeddingInput = Field(
        description="A string, a list of strings, a list of token ids, or a list of token-id lists."
    )
    model: StrictStr = Field(description="A served model name or an alias (see `GET /v1/models`).")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="`base64` returns little-endian float32 bytes, base64-encoded."
    )
    dimensions: StrictInt | None = Field(
        None, description="Truncate each embedding to this many dimensions, then re-normalize."
    )
    user: StrictStr | None = Field(None, description="Accepted and ignored.")
    # Extensions (the official clients send them through `extra_body`); docs/gateway.md names each peer's field.
    input_type: StrictStr | None = Field(
        None, description="query, passage (document, search_query, search_document) or a prompt name of the model."
    )
    truncate: Literal["END", "START", "NONE"] | None = Field(
        None, description="END keeps the start, START keeps the end, NONE refuses inputs over the max length."
    )
    embedding_type: Literal["float", "int8", "uint8", "binary", "ubinary"] = Field(
        "float", description="float32, calibrated int8/uint8, or sign bits packed 8 per byte (binary/ubinary)."
    )
    long_inputs: Literal["truncate", "chunk"] | None = Field(
        None, description="chunk: embed inputs over the max length as overlapping windows, then average them."
    )


class Embedding(TypedDict):
    """One embedding; `embedding` is a float list (a float32 numpy row until written) or a base64 string."""

    object: Literal["embedding"]
    embedding: list[float] | list[int] | str  # list[int]: the int8/uint8/binary/ubinary embedding types
    index: int


class Usage(TypedDict):
    """Token counts from the served model's own tokenizer."""

    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(TypedDict):
    """Body answered by `POST /v1/embeddings`."""

    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: Usage


class Model(TypedDict):
    """One entry of `GET /v1/models`; `kind` (ours, not OpenAI's) tells embedding from rerank models."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    kind: Literal["embedding", "rerank"]


class ModelWithPrompts(Model, total=False):
    """`GET /v1/models/{id}`: a `Model` plus the prompts `input_type` can name (our extension)."""

    prompts: dict[str, str]
    default_prompt_name: str | None


class ModelList(TypedDict):
    """Body answered by `GET /v1/models`."""

    object: Literal["list"]
    data: list[Model]


class ErrorDetail(TypedDict):
    """OpenAI's error object."""

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(TypedDict):
    """Every error body: `{"error": {...}}`."""

    error: ErrorDetail


class Status(TypedDict):
    """Body of `/health` and `/ready` when they answer 200."""

    status: str


def embedding_response(model: str, embeddings: Sequence[np.ndarray | str], tokens: int) -> EmbeddingResponse:
    """The `POST /v1/embeddings` body: `embeddings` are float32 rows or base64 strings, in input order."""
    data: list[Embedding] = [{"object": "embedding", "embedding": e, "index": i} for i, e in enumerate(embeddings)]
    usage: Usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "data": data, "model": model, "usage": usage}


def model_card(name: str, created: int, owner: str, kind: str = "embedding") -> Model:
    """One OpenAI `Model` object, with its kind."""
    return {"id": name, "object": "model", "created": created, "owned_by": owner, "kind": kind}


# ---- Rerank: the Cohere/Jina shape and the TEI shape --------------------------------------------------


class RerankDocument(BaseModel):
    """A document given as an object (Cohere v1, Jina): only `text` is read."""

    model_config = ConfigDict(extra="allow")
    text: StrictStr


class RerankRequest(BaseModel):
    """Body of `POST /v1/rerank` (Cohere v1/v2 and Jina shape); unknown fields are accepted."""

    model_config = ConfigDict(extra="allow")

    model: StrictStr = Field(description="A served rerank model or an alias (see `GET /v1/models`, kind `rerank`).")
    query: StrictStr = Field(description="The query every document is scored against.")
    documents: list[StrictStr | RerankDocument] = Field(description="Strings, or objects with a `text` field.")
    top_n: StrictInt | None = Field(None, description="Return only the best `top_n` results (default: all).")
    return_documents: StrictBool = Field(False, description="Echo each result's document as `{text}`.")
    max_chunks_per_doc: StrictInt | None = Field(
        None, description="Accepted for Cohere v1 clients; documents are never split: each is one chunk, truncated "
        "to the model's max length (longest_first, as the cross-encoder was trained)."
    )
    rank_fields: list[StrictStr] | None = Field(None, description="Accepted; only `text` is read.")


class TEIRerankRequest(BaseModel):
    """Body of `POST /rerank` in Hugging Face TEI's shape (recognised by `texts`)."""

    model_config = ConfigDict(extra="allow")

    query: StrictStr = Field(description="The query every text is scored against.")
    texts: list[StrictStr] = Field(description="The texts to score.")
    raw_scores: StrictBool = Field(False, description="Return the raw logits instead of the activated scores.")
    return_text: StrictBool = Field(False, description="Echo each text.")
    truncate: StrictBool | None = Field(None, description="false: a pair longer than the model's max length "
                                        "is a 400; default: the gateway's `truncate` setting.")
    model: StrictStr | None = Field(None, description="Our extension: a rerank model (default: the first served).")


class RerankResultDocument(TypedDict):
    text: str


class RerankResultItem(TypedDict, total=False):
    """One result: the document's index in the request, its score, and (if asked) the document."""

    index: int
    relevance_score: float
    document: RerankResultDocument


class RerankUsage(TypedDict):
    total_tokens: int


class RerankMeta(TypedDict):
    billed_units: dict[str, int]


class RerankResponse(TypedDict):
    """Body answered by `POST /v1/rerank` (Cohere/Jina shape), results best first."""

    id: str
    model: str
    results: list[RerankResultItem]
    meta: RerankMeta
    usage: RerankUsage


class TEIRerankItem(TypedDict, total=False):
    """One entry of TEI's answer, best first."""

    index: int
    score: float
    text: str
