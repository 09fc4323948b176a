"""What the gateway needs from an inference backend: the `Backend` protocol, its types and its errors.

`triton.TritonBackend` is the implementation; the unit tests' fake (tests/gw_helpers.py) is another. The
registry, the service and the batcher are typed against this protocol only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np


class TritonError(Exception):
    """The backend answered with an error the client did not cause (a 500)."""

    kind = "error"  # the `kind` label of gateway_triton_errors_total


class TritonUnavailable(TritonError):
    """Unreachable, shutting down, overloaded, or the model is not loaded right now (a 503)."""

    kind = "unavailable"


class TritonWorkerDown(TritonUnavailable):
    """A worker process of the model (a Python-backend stub) crashed; it is being reloaded (a 503)."""

    kind = "stub_unhealthy"


class TritonTimeout(TritonError):
    """One backend call ran past its deadline (a 504)."""

    kind = "timeout"


LOCAL = "local"  # the backend name of models Triton serves (others carry their upstream's name)


@dataclass(frozen=True)
class ModelInfo:
    """An embedding ensemble as its config's `parameters` describe it."""

    name: str
    dimension: int
    max_seq_length: int
    max_batch_size: int
    normalize: bool
    pooling_mode: str
    source_model: str
    fingerprint: str
    created: int
    backend: str = LOCAL  # who computes it: Triton, or an upstream's name (EMBEDDINGS_UPSTREAMS)
    prompts: dict = field(default_factory=dict, compare=False)  # what `input_type` can name
    default_prompt_name: str = ""
    quantization_ranges: dict = field(default_factory=dict, compare=False, repr=False)  # int8/uint8 output
    kind: ClassVar[str] = "embedding"


@dataclass(frozen=True)
class RerankModelInfo:
    """A rerank ensemble (cross-encoder) as its config's `parameters` describe it."""

    name: str
    max_seq_length: int
    max_batch_size: int
    activation: str
    source_model: str
    fingerprint: str
    created: int
    kind: ClassVar[str] = "rerank"
    backend: str = LOCAL  # reranking is local only


@dataclass
class RerankResult:
    """The rerank ensemble's outputs for n (query, document) pairs."""

    scores: np.ndarray  # [n] float32, activated
    logits: np.ndarray  # [n] float32, raw
    token_counts: np.ndarray  # [n] int64
    truncated: np.ndarray  # [n] bool


@dataclass
class EmbedResult:
    """The ensemble's outputs for n texts."""

    embeddings: np.ndarray  # [n, D] float32
    token_counts: np.ndarray  # [n] int64
    truncated: np.ndarray  # [n] bool


@runtime_checkable
class Backend(Protocol):
    """Served models, readiness, one embedding call and one rerank call; failures raise `TritonError` subclasses."""

    models: dict[str, ModelInfo | RerankModelInfo] | None  # None: never discovered yet

    async def start(self) -> None:
        """Connect and discover the models; a backend that is down is retried in the background."""
        ...

    async def close(self) -> None: ...

    async def ready(self, names: list[str]) -> tuple[bool, str]:
        """The backend live and every named model ready; returns (ok, reason)."""
        ...

    async def embed(
        self, model: str, texts: list[str], request_id: str = "", options: dict[str, list[str]] | None = None
    ) -> EmbedResult:
        """Embed at most the model's `max_batch_size` texts in one call; `options`: optional per-row inputs
        by contract name (PROMPT_NAME, TRUNCATE), sent only when a row asks for one."""
        ...

    async def windows(
        self, model: str, texts: list[str], prompt_names: list[str] | None = None, request_id: str = ""
    ) -> list[list[tuple[int, int, int]]]:
        """Per text, the windows (start char, end char, tokens) that fit the model (long_inputs: chunk)."""
        ...

    async def rerank(self, model: str, queries: list[str], documents: list[str], request_id: str = "") -> RerankResult:
        """Score at most the model's `max_batch_size` (query, document) pairs in one call."""
        ...

    def unknown_model_seen(self) -> None:
        """A client asked for a model not in `models`: look again soon (it may have been loaded since)."""
        ...
