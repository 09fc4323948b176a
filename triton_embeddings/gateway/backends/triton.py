"""The only module that talks to Triton: one async gRPC client, model discovery, and the ensemble call.

`TritonBackend` implements `base.Backend`; tensor names and parameters come from `contract`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
from tritonclient.grpc import (
    MAX_GRPC_MESSAGE_SIZE,
    InferenceServerException,
    InferInput,
    InferRequestedOutput,
    KeepAliveOptions,
)
from tritonclient.grpc.aio import InferenceServerClient

from triton_embeddings import contract
from triton_embeddings.gateway.backends.base import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    EmbedResult,
    ModelInfo,
    ModelNotFound,
    RerankModelInfo,
    RerankResult,
    WorkerDown,
)
from triton_embeddings.gateway.backends.direct import DirectRoute, route_from_configs

log = logging.getLogger("gateway.triton")
T = TypeVar("T")

# A served model that vanished from Triton (reloading after a crash) answers 503, not 404, this long.
LOST_MODEL_GRACE_S = 300.0
HOLD_RETRY_S = 0.5  # while a call is held (unavailable_hold_s), how often it is made again
PROBE_TEXT = "readiness probe"
INLINE_TOKENIZE_TEXTS = 16  # the direct path tokenizes this many texts or fewer on the event loop (~0.1 ms)


def _fingerprint(config: dict, params: contract.ParameterSet) -> str:
    """The cache key's config part: every ensemble parameter, the model file's precision and hash included
    (an int8 re-export under the same name must never be answered with cached fp32 results)."""
    described = {**contract.parameters_of(config), **params.to_parameters()}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


def model_info_from_config(config: dict, created: int) -> ModelInfo | RerankModelInfo | None:
    """Read a model config (Triton's JSON form); None when it is neither an embedding nor a rerank ensemble."""
    try:
        if contract.is_rerank_ensemble(config):
            return _rerank_info(config, created)
        if not contract.is_embedding_ensemble(config):
            return None
        params = contract.EnsembleParams.from_config(config)
    except contract.ContractError as e:
        log.warning("model %s not served: %s", config.get("name"), e)
        return None
    fingerprint = _fingerprint(config, params)
    return ModelInfo(
        name=config["name"],
        dimension=params.embedding_dimension,
        max_seq_length=params.max_seq_length,
        max_batch_size=max(1, int(config.get("max_batch_size") or 1)),
        normalize=params.normalize,
        pooling_mode=params.pooling_mode,
        source_model=params.source_model,
        fingerprint=fingerprint,
        created=created,
        prompts=dict(params.prompts),
        default_prompt_name=params.default_prompt_name,
        quantization_ranges=dict(params.quantization_ranges),
    )


def _rerank_info(config: dict, created: int) -> RerankModelInfo:
    params = contract.RerankParams.from_config(config)
    return RerankModelInfo(
        name=config["name"],
        max_seq_length=params.max_seq_length,
        max_batch_size=max(1, int(config.get("max_batch_size") or 1)),
        activation=params.activation,
        source_model=params.source_model,
        fingerprint=_fingerprint(config, params),
        created=created,
    )


def _channel_args() -> list[tuple[str, int]]:
    """tritonclient's defaults plus a short reconnect backoff, so a restarted Triton is found within ~1 s."""
    ka = KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", ka.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", ka.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", ka.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", ka.http2_max_pings_without_data),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]


def _bytes_column(name: str, values: list[str]) -> InferInput:
    """A [n, 1] BYTES input of UTF-8 strings."""
    tensor = InferInput(name, [len(values), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([v.encode("utf-8") for v in values], dtype=np.object_).reshape(-1, 1))
    return tensor


def _classify(exc: InferenceServerException, what: str) -> BackendError:
    status = str(exc.status() or "")
    message = exc.message() or ""
    if "DEADLINE_EXCEEDED" in status:
        return BackendTimeout(f"{what}: deadline exceeded")
    if "UNAVAILABLE" in status or "CANCELLED" in status:
        return BackendUnavailable(f"{what}: {message}")
    if "NOT_FOUND" in status or "unknown model" in message or "no available versions" in message:
        # Seen while Triton shuts down and unloads its models, or after a model was removed.
        return ModelNotFound(f"{what}: model not available: {message}")
    if "Stub process" in message and "is not healthy" in message:
        # A Python-backend stub died; Triton 2.51 never restarts it (local/supervisor.py reloads the model).
        return WorkerDown(f"{what}: {message}")
    return BackendError(f"{what}: {status} {message}")


class TritonBackend:
    """One `tritonclient.grpc.aio` client, the served embedding models, and a background refresh."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 30.0,
        ready_timeout_s: float = 1.0,
        refresh_interval_s: float = 30.0,
        only_models: list[str] | None = None,
        repository: Path | None = None,
        unavailable_hold_s: float = 0.0,
    ):
        self.url = url
        self.repository = repository  # where the direct path reads tokenizers (None: the ensembles only)
        self.routes: dict[str, tuple[str, DirectRoute | None]] = {}  # model -> (fingerprint, its direct route)
        self.timeout_s = timeout_s
        self.unavailable_hold_s = unavailable_hold_s  # EMBEDDINGS_UNAVAILABLE_HOLD_S
        self.ready_timeout_s = ready_timeout_s
        self.refresh_interval_s = refresh_interval_s
        self.only_models = only_models
        self.models: dict[str, ModelInfo | RerankModelInfo] | None = None  # None: never discovered yet
        self.healthy = False
        self._client: InferenceServerClient | None = None
        self._refresh_task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._created: dict[str, int] = {}
        self._last_discovery = 0.0
        self.broken: dict[str, str] = {}  # model -> why it cannot serve, until a call on it succeeds
        self._lost_since: dict[str, float] = {}
        self._present: set[str] = set()

    async def start(self) -> None:
        """Create the client and discover the models; a Triton that is down is retried in the background."""
        self._client = InferenceServerClient(self.url, channel_args=_channel_args())
        try:
            await self.discover()
        except BackendError as e:
            log.warning("Triton at %s not reachable yet (%s); retrying in the background", self.url, e)
        self._refresh_task = asyncio.create_task(self._refresh_loop(), name="triton-refresh")

    async def close(self) -> None:
        """Stop the refresh and close the gRPC channel."""
        if self._refresh_task is not None:
            self._refresh_task.cancel()
            try:
                await self._refresh_task
            except asyncio.CancelledError:
                pass
        if self._client is not None:
            await self._client.close()
            self._client = None

    @property
    def local_known(self) -> bool:
        """Whether the models were discovered at least once."""
        return self.models is not None

    def request_refresh(self) -> None:
        """Ask the background loop to re-read the models now (after an error that suggests a restart)."""
        self.healthy = False
        self._wake.set()

    def unknown_model_seen(self) -> None:
        """A client asked for a model we do not know: re-read the models, at most once a second."""
        if time.monotonic() - self._last_discovery > 1.0:
            self._wake.set()

    async def _refresh_loop(self) -> None:
        while True:
            delay = self.refresh_interval_s if self.healthy else 1.0
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.discover()
                await self._probe_broken()
            except BackendError as e:
                log.debug("model refresh failed: %s", e)
            except Exception:  # keep the loop alive whatever happens
                log.exception("model refresh failed")

    async def discover(self) -> dict[str, ModelInfo | RerankModelInfo]:
        """Read the loaded models (statistics API) and their configs; keep the embedding and rerank ensembles."""
        client = self._require_client()
        try:
            # Statistics list the loaded models; the repository index may be restricted (local/supervisor.py).
            stats = await client.get_inference_statistics("", as_json=True, client_timeout=self.ready_timeout_s)
            found: dict[str, ModelInfo | RerankModelInfo] = {}
            for name in sorted({entry.get("name", "") for entry in stats.get("model_stats", [])}):
                if self.only_models and name not in self.only_models:
                    continue
                cfg = await client.get_model_config(name, as_json=True, client_timeout=self.ready_timeout_s)
                created = self._created.setdefault(name, int(time.time()))
                info = model_info_from_config(cfg.get("config", {}), created)
                if info is not None:
                    found[name] = info
                    await self._route(info, cfg.get("config", {}))
        except InferenceServerException as e:
            self.healthy = False
            raise _classify(e, "model discovery") from None
        lost = self._lost_models(found)
        if set(found) != self._present:
            gone = f"; not loaded right now: {', '.join(sorted(lost))}" if lost else ""
            log.info("serving models: %s%s", ", ".join(sorted(found)) or "(none)", gone)
            self._present = set(found)
        self.models = {**lost, **found}
        self._last_discovery = time.monotonic()
        # Nothing (or not every model) loaded yet, e.g. Triton still (re)loading: look again in 1 s.
        self.healthy = bool(found) and not lost and not self.broken and all(m in found for m in self.only_models or ())
        return self.models

    async def _route(self, info: ModelInfo | RerankModelInfo, ensemble: dict) -> None:
        """Find (once per export) the model's direct route: its encoder and tokenizer steps' configs."""
        if self.repository is None or info.kind != ModelInfo.kind:
            return
        if self.routes.get(info.name, ("",))[0] == info.fingerprint:
            return
        client, (tokenizer, encoder, _) = self._require_client(), contract.step_names(info.name)
        configs = [(await client.get_model_config(m, as_json=True, client_timeout=self.ready_timeout_s))["config"]
                   for m in (encoder, tokenizer)]
        route = await asyncio.to_thread(route_from_configs, self.repository, ensemble, *configs)
        log.info("model %s: %s", info.name, "direct path (gateway tokenizes)" if route else "through the ensemble")
        self.routes[info.name] = (info.fingerprint, route)

    def _lost_models(self, found: dict[str, ModelInfo | RerankModelInfo]) -> dict[str, ModelInfo | RerankModelInfo]:
        """Models served before and missing now, kept for LOST_MODEL_GRACE_S (then they are unknown: 404)."""
        now = time.monotonic()
        lost = {}
        for name, info in (self.models or {}).items():
            if name not in found and now - self._lost_since.setdefault(name, now) < LOST_MODEL_GRACE_S:
                lost[name] = info
        self._lost_since = {n: t for n, t in self._lost_since.items() if n in lost}
        return lost

    async def _probe_broken(self) -> None:
        """One short text through each model marked broken; a success clears the mark."""
        for name in list(self.broken):
            info = (self.models or {}).get(name)
            try:
                if info is not None and info.kind == "rerank":
                    await self._rerank(name, [PROBE_TEXT], [PROBE_TEXT], "")
                else:
                    await self._embed(name, [PROBE_TEXT], "")
            except BackendError:
                continue
            log.info("model %s serves again", name)
            self.broken.pop(name, None)

    async def ready(self, names: list[str]) -> tuple[bool, str]:
        """Triton live and every named model ready; returns (ok, reason)."""
        for name in names:
            if name in self.broken:
                return False, f"model {name} cannot serve: {self.broken[name]}"
        client = self._require_client()
        try:
            if not await client.is_server_live(client_timeout=self.ready_timeout_s):
                return False, "Triton is not live"
            for name in names:
                if not await client.is_model_ready(name, client_timeout=self.ready_timeout_s):
                    return False, f"model {name} is not ready"
        except InferenceServerException as e:
            return False, str(_classify(e, "readiness"))
        return True, "ready"

    async def embed(
        self, model: str, texts: list[str], request_id: str = "", options: dict[str, list[str]] | None = None
    ) -> EmbedResult:
        """Run the ensemble on one batch (at most the model's max_batch_size texts).

        `options`: optional per-row inputs by name (contract.PROMPT_NAME, contract.TRUNCATE).
        """
        return await self._guarded(model, lambda: self._embed(model, texts, request_id, options))

    async def _guarded(self, model: str, call: Callable[[], Awaitable[T]]) -> T:
        """Await one inference (`call()`); a crashed worker marks the model broken (until a probe passes).
        While Triton is unreachable (restarting, reloading the model), the call is made again every
        HOLD_RETRY_S for up to `unavailable_hold_s`; then the last failure is raised (the client's 503)."""
        held_until = time.monotonic() + self.unavailable_hold_s
        while True:
            try:
                result = await call()
                break
            except BackendUnavailable as e:
                if isinstance(e, WorkerDown):
                    self.broken[model] = "a Triton worker (Python-backend stub) crashed"
                self.request_refresh()
                if time.monotonic() + HOLD_RETRY_S > held_until:
                    raise
            await asyncio.sleep(HOLD_RETRY_S)
        self.broken.pop(model, None)
        return result

    def route(self, model: str) -> DirectRoute | None:
        return self.routes.get(model, ("", None))[1]

    async def _embed(
        self, model: str, texts: list[str], request_id: str, options: dict[str, list[str]] | None = None
    ) -> EmbedResult:
        if (route := self.route(model)) is not None:
            return await self._embed_direct(model, route, texts, request_id, options)
        n = len(texts)
        inputs = [_bytes_column(contract.TEXT, texts)]
        inputs += [_bytes_column(name, values) for name, values in (options or {}).items()]
        outputs = [InferRequestedOutput(name) for name in contract.ENSEMBLE_OUTPUTS]
        res = await self._call(model, inputs, outputs, request_id)
        emb, counts, truncated = (res.as_numpy(name) for name in contract.ENSEMBLE_OUTPUTS)
        if emb is None or counts is None or truncated is None or emb.shape[0] != n:
            raise BackendError(f"inference on {model}: unexpected outputs")
        return EmbedResult(
            embeddings=np.asarray(emb, dtype=np.float32),
            token_counts=counts.reshape(n).astype(np.int64),
            truncated=truncated.reshape(n).astype(bool),
        )

    async def _embed_direct(self, model: str, route: DirectRoute, texts: list[str], request_id: str,
                            options: dict[str, list[str]] | None) -> EmbedResult:
        """Tokenize here (a thread for big batches: the Rust tokenizer releases the GIL), then one encoder call."""
        try:
            enc = (route.encode(texts, options) if len(texts) <= INLINE_TOKENIZE_TEXTS
                   else await asyncio.to_thread(route.encode, texts, options))
        except ValueError as e:
            raise BackendError(f"tokenizing for {model}: {e}") from None
        res = await self._call(route.encoder, route.infer_inputs(enc), [InferRequestedOutput(contract.EMBEDDING)],
                               request_id)
        emb = res.as_numpy(contract.EMBEDDING)
        if emb is None or emb.shape[0] != len(texts):
            raise BackendError(f"inference on {route.encoder}: unexpected outputs")
        return EmbedResult(embeddings=np.asarray(emb, dtype=np.float32),
                           token_counts=enc.token_count.reshape(-1).astype(np.int64),
                           truncated=enc.truncated.reshape(-1).astype(bool))

    async def rerank(self, model: str, queries: list[str], documents: list[str], request_id: str = "") -> RerankResult:
        """Run the rerank ensemble on one batch of pairs (at most the model's max_batch_size)."""
        return await self._guarded(model, lambda: self._rerank(model, queries, documents, request_id))

    async def _rerank(self, model: str, queries: list[str], documents: list[str], request_id: str) -> RerankResult:
        n = len(documents)
        inputs = [_bytes_column(contract.QUERY, queries), _bytes_column(contract.DOCUMENT, documents)]
        outputs = [InferRequestedOutput(name) for name in contract.RERANK_OUTPUTS]
        res = await self._call(model, inputs, outputs, request_id)
        scores, logits, counts, truncated = (res.as_numpy(name) for name in contract.RERANK_OUTPUTS)
        if any(a is None or a.shape[0] != n for a in (scores, logits, counts, truncated)):
            raise BackendError(f"inference on {model}: unexpected outputs")
        return RerankResult(
            scores=scores.reshape(n).astype(np.float32),
            logits=logits.reshape(n).astype(np.float32),
            token_counts=counts.reshape(n).astype(np.int64),
            truncated=truncated.reshape(n).astype(bool),
        )

    async def _call(self, model: str, inputs: list, outputs: list, request_id: str):
        client = self._require_client()
        try:
            return await client.infer(model, inputs, outputs=outputs, request_id=request_id,
                                      client_timeout=self.timeout_s)
        except InferenceServerException as e:
            raise _classify(e, f"inference on {model}") from None

    async def windows(
        self, model: str, texts: list[str], prompt_names: list[str] | None = None, request_id: str = ""
    ) -> list[list[tuple[int, int, int]]]:
        """Per text, the windows (start char, end char, tokens) that the tokenizer step cuts (WINDOW_SPANS)."""
        return await self._guarded(model, lambda: self._windows(model, texts, prompt_names, request_id))

    async def _windows(self, model: str, texts: list[str], prompt_names: list[str] | None,
                       request_id: str) -> list[list[tuple[int, int, int]]]:
        if (route := self.route(model)) is not None:
            return await asyncio.to_thread(route.windows, texts, prompt_names)
        inputs = [_bytes_column(contract.TEXT, texts)]
        if prompt_names:
            inputs.append(_bytes_column(contract.PROMPT_NAME, prompt_names))
        step = contract.step_names(model)[0]
        res = await self._call(step, inputs, [InferRequestedOutput(contract.WINDOW_SPANS)], request_id)
        spans = res.as_numpy(contract.WINDOW_SPANS)
        if spans is None or spans.shape[0] != len(texts):
            raise BackendError(f"windows on {step}: unexpected outputs")
        return [[(int(a), int(b), int(k)) for a, b, k in rows if k >= 0] for rows in spans]

    def _require_client(self) -> InferenceServerClient:
        if self._client is None:
            raise BackendUnavailable("the Triton client is not started")
        return self._client
