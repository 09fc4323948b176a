"""Retrieval options of one request: prompt (input_type), truncation side, output type, long inputs.

Pure functions over the request and the model's contract parameters; the service calls them.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np

from triton_embeddings import contract, quantize
from triton_embeddings.gateway.backend import LOCAL
from triton_embeddings.gateway.errors import APIError, ErrorKind


@dataclass(frozen=True)
class Options:
    """What one request asks of the model beyond its texts."""

    prompt_name: str = ""  # sent as PROMPT_NAME; "" = the model's default prompt
    prompt: str = ""  # the prompt text it resolves to (part of the cache key)
    truncate: str = "END"  # END, START or NONE (NONE is checked here from TRUNCATED; Triton cuts at END)
    chunk: bool = False  # split inputs longer than the model into windows

    @property
    def side(self) -> str:
        """The TRUNCATE value sent to Triton ("" = its default, END)."""
        return "START" if self.truncate == "START" else ""


def options_of(req, info, settings) -> Options:
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


def cache_prefix(options: Options, info) -> str:
    """What a cache key hashes before the text: nothing for the default prompt and side (plain requests)."""
    default = contract.resolve_prompt("", info.prompts, info.default_prompt_name)
    if options.prompt == default and not options.side:
        return ""
    return f"{options.prompt}\x1f{options.side}\x1f"


def combine_windows(vectors: np.ndarray, tokens: np.ndarray, normalize: bool) -> np.ndarray:
    """Token-weighted mean of window vectors ([k, D], [k]); unit length when the model normalizes."""
    weights = np.asarray(tokens, dtype=np.float64)
    mean = (vectors.astype(np.float64) * weights[:, None]).sum(axis=0) / max(weights.sum(), 1.0)
    if normalize:
        norm = np.linalg.norm(mean)
        mean = mean / norm if norm > 0 else mean
    return mean.astype(np.float32)


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
