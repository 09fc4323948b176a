"""What the gateway needs from an inference backend: the `Backend` protocol, its types and its typed errors.

`triton.TritonBackend` is the implementation; the unit tests' fake (tests/gw_helpers.py) is another. The
registry and the pipeline are typed against this protocol only. Backends raise `BackendError` subclasses,
never the client's errors: the pipeline's failure path maps them (pipeline/admission.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np


class BackendError(Exception):
    """The backend failed in a way the client did not cause; the base of every backend failure."""

    kind = "error"  # the `kind` label of gateway_triton_errors_total / gateway_upstream_errors_total


class BackendUnavailable(BackendError):
    """Unreachable, shutting down or overloaded right now."""

    kind = "unavailable"


class WorkerDown(BackendUnavailable):
    """A worker process of the model (a Python-backend stub) crashed; it is being reloaded."""

    kind = "stub_unhealthy"


class ModelNotFound(BackendUnavailable):
    """The backend does not have the model loaded right now (unloading, or removed)."""


class UpstreamError(BackendUnavailable):
    """An upstream API answered an error status of its own (5xx, 429, rejected credentials)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class BackendTimeout(BackendError):
    """One backend call ran past its deadline."""

    kind = "timeout"


class BadInput(BackendError):
    """The backend refused the input itself (an upstream's 400/413/422); `code` is its error code, if plain."""

    kind = "rejected"

    def __init__(self, message: str, status: int, code: str = ""):
        super().__init__(message)
        self.status = status
        self.code = code


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
    """Served models, readiness, one embedding call and one rerank call; failures raise `BackendError` subclasses."""

    models: dict[str, ModelInfo | RerankModelInfo] | None  # None: never discovered yet
    # Whether the local models were discovered; False: an unknown name may be a local model (503, not 404).
    local_known: bool

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
