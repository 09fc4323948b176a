"""Upstream OpenAI-compatible APIs as a `Backend`: the models named in `EMBEDDINGS_UPSTREAMS` are forwarded
there (one HTTP client per upstream), so applications use one base URL for cloud and local models.

The key is read from the named environment variable or file at startup and only ever sent upstream in the
`Authorization` header: it is never logged, and upstream error bodies (which may quote it) are never
passed on. Failures raise the backends' typed errors (the pipeline answers them, pipeline/admission.py):
unreachable, 5xx, 429, rejected credentials or a malformed answer -> unavailable (503 with Retry-After);
too slow -> timeout (504); an input it rejects (400/413/422) -> `BadInput` (400).
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable

import httpx
import numpy as np

from triton_embeddings.gateway.backends.base import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    BadInput,
    EmbedResult,
    ModelInfo,
    RerankResult,
    UpstreamError,
)
from triton_embeddings.gateway.settings import UpstreamConfig

log = logging.getLogger("gateway.upstream")


def split_tokens(total: int, texts: list[str]) -> np.ndarray:
    """The upstream's usage (per request) split over its texts by UTF-8 length, summing to `total`."""
    weights = np.array([len(t.encode("utf-8")) + 1 for t in texts], dtype=np.float64)
    shares = total * weights / weights.sum()
    counts = np.floor(shares).astype(np.int64)
    counts[np.argsort(counts - shares)[: total - int(counts.sum())]] += 1  # largest remainders get the rest
    return counts


def decode_vectors(body: dict, n: int) -> np.ndarray:
    """The `data` of an embeddings answer (base64 or float lists), in input order."""
    rows = sorted(body["data"], key=lambda d: d["index"])
    if len(rows) != n:
        raise ValueError(f"upstream answered {len(rows)} embeddings for {n} inputs")
    vectors = [np.frombuffer(base64.b64decode(r["embedding"]), dtype="<f4") if isinstance(r["embedding"], str)
               else np.asarray(r["embedding"], dtype=np.float32) for r in rows]
    return np.stack(vectors)


class UpstreamBackend:
    """The models forwarded to one upstream API (one base URL and key)."""

    def __init__(self, name: str, base_url: str, api_key: str, models: dict[str, UpstreamConfig],
                 observe: Callable[[str, float], None] = lambda name, seconds: None):
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.configs = models
        self.observe = observe  # (backend, seconds) of every call
        self.models: dict[str, ModelInfo] | None = {m: self._info(m, c) for m, c in models.items()}
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client: httpx.AsyncClient | None = None

    def _info(self, name: str, config: UpstreamConfig) -> ModelInfo:
        return ModelInfo(
            name=name, dimension=config.dimension or 0, max_seq_length=0, max_batch_size=config.max_batch_size,
            normalize=True, pooling_mode="upstream", source_model=config.model or name,
            fingerprint=f"upstream:{self.base_url}:{config.model or name}", created=int(time.time()),
            backend=self.name,
        )

    async def start(self) -> None:
        self._client = httpx.AsyncClient(base_url=self.base_url, headers=self._headers,
                                         limits=httpx.Limits(max_keepalive_connections=32))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def ready(self, names: list[str]) -> tuple[bool, str]:
        return True, "ready"  # not probed: an upstream outage must not take the local models out of rotation

    local_known = True  # its models are configured, never discovered

    def unknown_model_seen(self) -> None:
        return None

    async def embed(
        self, model: str, texts: list[str], request_id: str = "", options: dict[str, list[str]] | None = None
    ) -> EmbedResult:
        # options never reach here: upstream models have no prompts, and START/chunk are refused (http/wire.py)
        config = self.configs[model]
        payload = {"model": config.model or model, "input": texts, "encoding_format": "base64"}
        t0 = time.perf_counter()
        try:
            response = await self._client.post("/embeddings", json=payload, timeout=config.timeout_s,
                                                headers={"X-Request-ID": request_id} if request_id else None)
            body = self._checked(response)
            vectors = decode_vectors(body, len(texts))
        except httpx.TimeoutException:
            raise BackendTimeout(f"upstream {self.name} did not answer within {config.timeout_s:g} s") from None
        except httpx.TransportError as e:
            raise BackendUnavailable(f"upstream {self.name} unreachable ({type(e).__name__})") from None
        except (ValueError, KeyError, TypeError) as e:  # a broken upstream: 503, as when it is down
            raise BackendUnavailable(f"upstream {self.name} answered a malformed body ({type(e).__name__})") from None
        finally:
            self.observe(self.name, time.perf_counter() - t0)
        tokens = int((body.get("usage") or {}).get("total_tokens") or 0)
        return EmbedResult(vectors, split_tokens(tokens, texts), np.zeros(len(texts), dtype=bool))

    async def windows(
        self, model: str, texts: list[str], prompt_names: list[str] | None = None, request_id: str = ""
    ) -> list[list[tuple[int, int, int]]]:
        raise BackendError(f"upstream {self.name} cannot cut windows")  # chunking is refused for upstream models

    async def rerank(self, model: str, queries: list[str], documents: list[str], request_id: str = "") -> RerankResult:
        raise BackendError(f"upstream {self.name} serves embedding models only")  # the registry never routes here

    def _checked(self, response: httpx.Response) -> dict:
        """The JSON body of a 200; any other status becomes a typed error (no upstream text)."""
        status = response.status_code
        if status == 200:
            return response.json()
        if status in (400, 413, 422):
            raise BadInput(f"upstream {self.name} rejected the input (HTTP {status})", status, _error_code(response))
        if status in (401, 403):
            log.error("upstream %s rejected the gateway's API key (HTTP %d): check its key setting", self.name, status)
        else:
            log.warning("upstream %s answered HTTP %d", self.name, status)
        raise UpstreamError(f"upstream {self.name} answered HTTP {status}", status)


def _error_code(response: httpx.Response) -> str:
    """OpenAI's machine-readable error `code` (e.g. context_length_exceeded) when it is a plain identifier."""
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return ""
    return code if isinstance(code, str) and code.replace("_", "").isalnum() and len(code) < 64 else ""


def make_upstreams(configs: dict[str, UpstreamConfig], metrics) -> list[UpstreamBackend]:
    """One backend per upstream name; its models must share one base URL and key."""
    groups: dict[str, dict[str, UpstreamConfig]] = {}
    for model, config in configs.items():
        groups.setdefault(config.backend_name, {})[model] = config
    backends = []
    for name, models in groups.items():
        first = next(iter(models.values()))
        if any(c.base_url != first.base_url or c.api_key() != first.api_key() for c in models.values()):
            raise ValueError(f"upstream {name}: its models differ in base URL or key; give each its own name")
        backends.append(UpstreamBackend(name, first.base_url, first.api_key(), models,
                                        lambda backend, s: metrics.upstream_latency.labels(backend).observe(s)))
    return backends
