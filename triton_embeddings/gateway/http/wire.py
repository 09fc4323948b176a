"""Wire <-> domain: OpenAI/Cohere/TEI requests become the tasks' inputs (validated against the model), and
the tasks' results become the wire answers."""

from __future__ import annotations

import base64
import uuid

import numpy as np

from triton_embeddings import contract, quantize
from triton_embeddings.gateway.backends.base import LOCAL, ModelInfo
from triton_embeddings.gateway.errors import APIError, ErrorKind
from triton_embeddings.gateway.http.protocol import (
    EmbeddingRequest,
    EmbeddingResponse,
    RerankRequest,
    RerankResponse,
    RerankResultItem,
    TEIRerankItem,
    TEIRerankRequest,
    embedding_response,
)
from triton_embeddings.gateway.http.token_ids import TokenDecoder
from triton_embeddings.gateway.pipeline.embeddings import Embedded, Texts
from triton_embeddings.gateway.pipeline.rerank import Pairs, Scored
from triton_embeddings.gateway.pipeline.retrieval import Options
from triton_embeddings.gateway.settings import Settings

# ---- embeddings ---------------------------------------------------------------------------------------


def texts_of(req: EmbeddingRequest, decoder: TokenDecoder) -> list[str]:
    """The request's inputs as texts; token ids are decoded as cl100k_base."""
    raw = req.input
    if isinstance(raw, str):
        items: list = [raw]
    elif raw and isinstance(raw[0], int):
        items = [raw]  # one token-id input
    else:
        items = list(raw)
    if not items:
        raise APIError(ErrorKind.INVALID_REQUEST, "'input' must not be an empty array.", param="input")
    texts = []
    for i, item in enumerate(items):
        if not item:
            raise APIError(ErrorKind.INVALID_REQUEST, f"Input {i} is empty; inputs must be non-empty.", param="input")
        texts.append(item if isinstance(item, str) else decoder.decode(item, i))
    return texts


def check_dimensions(dims: int | None, info: ModelInfo) -> None:
    upper = info.dimension or dims or 1  # 0: an upstream model of unconfigured length (checked there)
    if dims is not None and not 1 <= dims <= upper:
        raise APIError(
            ErrorKind.INVALID_REQUEST,
            f"'dimensions' must be between 1 and {info.dimension} for model {info.name}; got {dims}.",
            param="dimensions",
        )


def embeddings_input(req: EmbeddingRequest, info: ModelInfo, settings: Settings, decoder: TokenDecoder) -> Texts:
    """The domain input of an embeddings request: its texts and its retrieval options."""
    texts = texts_of(req, decoder)
    check_dimensions(req.dimensions, info)
    return Texts(texts, options_of(req, info, settings))


def embeddings_answer(req: EmbeddingRequest, info: ModelInfo, embedded: Embedded) -> EmbeddingResponse:
    """float32 rows (orjson writes the shortest float32 repr), integer rows, or base64 strings."""
    return embedding_response(req.model, encode_vectors(embedded.vectors, req, info), embedded.tokens)


def options_of(req: EmbeddingRequest, info: ModelInfo, settings: Settings) -> Options:
    """Validate the request's retrieval fields against the model; 400 naming the field otherwise."""
    name = req.input_type or ""
    try:
        prompt = contract.resolve_prompt(name, info.prompts, info.default_prompt_name)
    except contract.UnknownPromptError:
        names = ", ".join(contract.prompt_names(info.prompts))
        raise APIError(
            ErrorKind.INVALID_REQUEST,
            f"Unknown input_type {name!r} for model {info.name}; it accepts: {names}.",
            param="input_type",
        ) from None
    if info.backend != LOCAL:
        _check_upstream(req, info)
    truncate = req.truncate or ("END" if settings.truncate else "NONE")
    chunk = (req.long_inputs or settings.long_inputs) == "chunk" and info.backend == LOCAL
    if req.embedding_type in quantize.INTEGER_TYPES and not info.quantization_ranges:
        raise APIError(
            ErrorKind.INVALID_REQUEST,
            f"Model {info.name} has no calibrated int8/uint8 ranges; re-export it with this version of "
            "embeddings-export, or ask for float, binary or ubinary.",
            param="embedding_type",
        )
    return Options(name, prompt, truncate, chunk)


def _check_upstream(req, info) -> None:
    """An upstream API truncates (or refuses) long inputs itself: START and chunk cannot be forwarded: 400."""
    for name, value in (("truncate", "START"), ("long_inputs", "chunk")):
        if getattr(req, name) == value:
            raise APIError(
                ErrorKind.INVALID_REQUEST,
                f"Model {info.name} is served by an upstream API; {name} {value!r} is available for local models only.",
                param=name,
            )




def encode_vectors(vectors: np.ndarray, req, info) -> list:
    """Truncate to `dimensions` (renormalizing), quantize to `embedding_type`, render per `encoding_format`."""
    dims = req.dimensions or info.dimension or vectors.shape[1]  # 0: an upstream model of unconfigured length
    renormalized = dims < vectors.shape[1]
    if renormalized:
        vectors = vectors[:, :dims]
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.where(norms > 0, norms, 1.0)
    kind = req.embedding_type or "float"
    ranges = None
    if kind in quantize.INTEGER_TYPES:
        ranges = quantize.ranges_for(info.quantization_ranges, dims, renormalized)
    rows = quantize.quantize(vectors, kind, ranges)
    if req.encoding_format == "base64":
        return [base64.b64encode(r.tobytes()).decode("ascii") for r in rows]
    return list(rows)  # numpy rows: orjson writes float32 as floats, int8/uint8 as integers


# ---- rerank -------------------------------------------------------------------------------------------


def rerank_input(req: RerankRequest, settings: Settings) -> Pairs:
    """The Cohere/Jina shape's domain input (documents as strings or `{text}` objects)."""
    documents = [d if isinstance(d, str) else d.text for d in req.documents]
    return Pairs(req.query, documents, settings.truncate, "documents")


def check_rerank_options(req: RerankRequest) -> None:
    for name in ("top_n", "max_chunks_per_doc"):
        value = getattr(req, name)
        if value is not None and value < 1:
            raise APIError(ErrorKind.INVALID_REQUEST, f"'{name}' must be at least 1; got {value}.", param=name)


def rerank_answer(req: RerankRequest, pairs: Pairs, scored: Scored) -> RerankResponse:
    """The Cohere/Jina shape: results best first, cut at `top_n`."""
    results: list[RerankResultItem] = []
    for i in best_first(scored.scores)[: req.top_n]:
        item: RerankResultItem = {"index": i, "relevance_score": float(scored.scores[i])}
        if req.return_documents:
            item["document"] = {"text": pairs.documents[i]}
        results.append(item)
    return {
        "id": str(uuid.uuid4()),
        "model": req.model,
        "results": results,
        "meta": {"billed_units": {"input_tokens": scored.tokens}},
        "usage": {"total_tokens": scored.tokens},
    }


def tei_input(req: TEIRerankRequest, settings: Settings) -> Pairs:
    truncate = settings.truncate if req.truncate is None else req.truncate
    return Pairs(req.query, req.texts, truncate, "texts")


def tei_answer(req: TEIRerankRequest, scored: Scored) -> list[TEIRerankItem]:
    """TEI's shape: `[{index, score, text?}]`, best first; `raw_scores` gives the logits."""
    values = scored.logits if req.raw_scores else scored.scores
    out: list[TEIRerankItem] = []
    for i in best_first(scored.scores):
        item: TEIRerankItem = {"index": i, "score": float(values[i])}
        if req.return_text:
            item["text"] = req.texts[i]
        out.append(item)
    return out


def best_first(scores: np.ndarray) -> list[int]:
    """Indices by descending score; equal scores keep the request's order."""
    return [int(i) for i in np.argsort(-scores, kind="stable")]
