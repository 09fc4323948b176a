"""Wire models mirroring OpenAI's embeddings and models API types."""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

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


class Embedding(BaseModel):
    """One embedding; `embedding` is a float list or a base64 string."""

    object: Literal["embedding"] = "embedding"
    embedding: list[float] | list[int] | str
    index: int


class Usage(BaseModel):
    """Token counts from the served model's own tokenizer."""

    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    """Body answered by `POST /v1/embeddings`."""

    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class Model(BaseModel):
    """One entry of `GET /v1/models`."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    prompts: dict[str, str] | None = None
    default_prompt_name: str | None = None


class ModelList(BaseModel):
    """Body answered by `GET /v1/models`."""

    object: Literal["list"] = "list"
    data: list[Model]


class ErrorDetail(BaseModel):
    """OpenAI's error object."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error body: `{"error": {...}}`."""

    error: ErrorDetail
