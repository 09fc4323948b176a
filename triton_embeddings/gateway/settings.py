"""Gateway settings: each field is an environment variable prefixed `EMBEDDINGS_` (e.g. `EMBEDDINGS_PORT`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Target meaning "the default model" in `model_aliases`.
DEFAULT_TARGET = "default"
# The Batch API's store when EMBEDDINGS_BATCH_STORE is unset.
DEFAULT_BATCH_STORE = "sqlite:///~/.local/state/triton-embeddings/batch.sqlite3"


class ShadowConfig(BaseModel):
    """Also embed a sampled share of this model's requests with a local model, after answering (metrics only)."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="Local model that receives the shadow copies.")
    share: float = Field(ge=0.0, le=1.0, description="Share of requests copied (0.1 = one in ten).")


class UpstreamConfig(BaseModel):
    """One model served by an upstream OpenAI-compatible API (a value of `EMBEDDINGS_UPSTREAMS`)."""

    model_config = ConfigDict(extra="forbid")
    base_url: str = Field(description="The API's base URL, e.g. https://api.openai.com/v1.")
    api_key_env: str | None = Field(None, description="Environment variable holding the API key.")
    api_key_file: Path | None = Field(None, description="File holding the API key (e.g. a mounted secret).")
    name: str | None = Field(None, description="Backend name in metrics and `owned_by`; default: the URL's host.")
    model: str | None = Field(None, description="Model name at the upstream; default: the name clients use.")
    dimension: int | None = Field(None, ge=1, description="Vector length, to check `dimensions`; unset: not checked.")
    max_batch_size: int = Field(2048, ge=1, description="Most inputs per upstream call.")
    timeout_s: float = Field(30.0, gt=0, description="Deadline of one upstream call; past it: 504.")
    shadow: ShadowConfig | None = Field(None, description="Optional shadow traffic to a local model.")

    @field_validator("name")
    @classmethod
    def _not_local(cls, v):
        if v == "local":
            raise ValueError('"local" names the local Triton backend; give the upstream another name')
        return v

    @property
    def backend_name(self) -> str:
        return self.name or urlsplit(self.base_url).hostname or "upstream"

    def api_key(self) -> str:
        """The key from the variable or file; an upstream with neither sends no key (a local gateway)."""
        if self.api_key_env:
            key = os.environ.get(self.api_key_env, "")
            if not key:
                raise ValueError(f"upstream {self.backend_name}: environment variable {self.api_key_env} is empty")
            return key
        if self.api_key_file:
            return self.api_key_file.read_text(encoding="utf-8").strip()
        return ""


class Settings(BaseSettings):
    """All gateway knobs; list- and dict-valued fields take JSON in the environment."""

    model_config = SettingsConfigDict(env_prefix="EMBEDDINGS_", extra="ignore", validate_default=True)

    # --- HTTP server ---
    host: str = Field("127.0.0.1", description="Address the gateway listens on (0.0.0.0 in containers).")
    port: int = Field(8080, description="Port the gateway listens on.")
    workers: int = Field(
        1,
        ge=1,
        description="Gateway processes on the one port (SO_REUSEPORT; docs/gateway.md#worker-processes). On a "
        "CPU-only host: one per core Triton leaves free. On a GPU host the gateway is the bottleneck: about one "
        "per 2 cores, leaving 2 cores per GPU to Triton. Caches, batching and limits are per process.",
    )
    keep_alive_s: int = Field(
        75, description="Idle keep-alive of client connections; longer than a proxy's (nginx: 60 s) avoids 502s."
    )
    request_read_timeout_s: float = Field(
        30.0,
        gt=0,
        description="A connection must deliver each complete request (headers and body) within this many "
        "seconds of connecting or of starting it, else it is closed (silent or slow clients).",
    )
    max_connections: int = Field(
        1024, ge=1, description="Open client connections at most; a request on one past it gets 503 and a close."
    )
    shutdown_delay_s: float = Field(
        5.0,
        ge=0,
        description="On SIGTERM, `/ready` answers 503 at once but requests are still served this long, so "
        "load balancers stop sending before the listener closes.",
    )
    drain_timeout_s: int = Field(
        10, ge=1, description="After that, in-flight requests get this long to finish before they are cut."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    access_log: bool = Field(True, description="Log one line per request (request id, path, status, time).")
    log_inputs: bool = Field(
        False, description="Log input texts at debug level. Off by default: texts never reach the log."
    )

    # --- Triton ---
    triton_grpc_url: str = Field("localhost:8001", description="Triton's gRPC endpoint, host:port.")
    triton_metrics_url: str | None = Field(
        "http://localhost:8002/metrics",
        description="Triton's Prometheus endpoint, merged into `/metrics`; empty to not merge.",
    )
    triton_metrics_timeout_s: float = Field(0.5, description="Timeout for scraping Triton's metrics.")
    triton_timeout_s: float = Field(30.0, description="Deadline of one Triton inference call; past it: 504.")
    request_timeout_s: float = Field(
        120.0, description="Deadline of a whole embeddings request, waiting for Triton included; past it: 504."
    )
    ready_timeout_s: float = Field(1.0, description="Deadline of the Triton calls behind `/ready`.")
    refresh_interval_s: float = Field(
        30.0, description="How often the served models are re-read from Triton (every 1 s while it is down)."
    )
    retry_after_s: int = Field(1, description="`Retry-After` seconds sent with 429 and 503 answers.")
    unavailable_hold_s: float = Field(
        0.0,
        ge=0,
        description="While Triton is unreachable (restarting, reloading a model), a request waits, its Triton "
        "call made again every 0.5 s, this long before it is answered 503 with Retry-After; 0: at once. Set it "
        "past Triton's restart time (about 7 s with 3 models on 2 idle cores, more when loaded) and past the "
        "clients' own retries.",
    )

    model_repository: Path | None = Field(
        None,
        description="Triton's model repository as this gateway can read it (e.g. mounted read-only). Set: the "
        "gateway tokenizes itself and calls each embedded encoder directly with token ids, one Triton hop "
        "instead of three (docs/contract.md, the direct path); a model it cannot read goes through its "
        "ensemble. Unset: every request goes through the ensembles.",
    )

    # --- Models ---
    models: list[str] | None = Field(
        None, description="Triton ensembles to serve; unset: every embedding and rerank ensemble Triton has loaded."
    )
    default_model: str | None = Field(
        None, description="Model that aliases point at; unset: the only served model, else the first by name."
    )
    model_aliases: dict[str, str] = Field(
        default_factory=lambda: {
            "text-embedding-ada-002": DEFAULT_TARGET,
            "text-embedding-3-small": DEFAULT_TARGET,
        },
        description='Extra model names clients may use, each mapped to a served model or to "default".',
    )

    # --- Limits ---
    max_inputs: int = Field(2048, ge=1, description="Most inputs in one request (OpenAI's limit is 2048).")
    max_documents: int = Field(1000, ge=1, description="Most documents in one rerank request (Cohere's limit is 1000).")
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Request body cap; above it: 413.")
    max_tokens_per_request: int = Field(
        300_000, ge=1, description="Most tokens (as the model's tokenizer counts them) in one request."
    )
    truncate: bool = Field(
        True,
        description="Truncate inputs longer than the model's max length (sentence-transformers' behaviour); "
        "false answers OpenAI's context-length 400 instead.",
    )
    long_inputs: Literal["truncate", "chunk"] = Field(
        "truncate",
        description="Inputs over the model's max length: truncate (per `truncate`), or chunk into overlapping "
        "windows embedded separately and averaged, token-weighted (a request's `long_inputs` overrides it).",
    )
    max_in_flight: int = Field(
        512, ge=1, description="Embedding requests handled at once; above it: 429 with Retry-After."
    )
    max_concurrent_batches: int = Field(
        4,
        ge=1,
        description="Triton calls in flight per model. Texts arriving meanwhile, from any request, are "
        "sent together in the next call: at most an even share of the texts outstanding (queued and in "
        "flight) over this number, at least 4, at most the model's max_batch_size.",
    )

    # --- Security ---
    api_keys: list[SecretStr] = Field(
        default_factory=list, description="Accepted Bearer keys (JSON list); none and no file: auth is off."
    )
    api_keys_file: Path | None = Field(
        None, description="File with one accepted key per line (blank lines and # comments ignored)."
    )
    metrics_require_auth: bool = Field(False, description="Require an API key for `/metrics` too.")

    # --- Cache ---
    cache: Literal["memory", "redis", "none"] = Field(
        "memory", description="Per-text embedding cache: memory (in-process LRU), redis, or none."
    )
    cache_size: int = Field(10_000, ge=0, description="Entries kept by the in-process LRU cache.")
    cache_ttl_s: float | None = Field(None, description="Entry lifetime in seconds; unset: no expiry.")
    redis_url: SecretStr | None = Field(
        None, description="redis:// URL for `cache=redis` (may hold a password, so it is redacted)."
    )
    redis_timeout_s: float = Field(0.25, description="Socket timeout of Redis calls.")
    redis_retry_s: float = Field(5.0, description="After a Redis failure, skip the cache for this long.")

    # --- Token-id inputs ---
    tiktoken_file: Path | None = Field(
        None,
        description="Local `cl100k_base.tiktoken` for decoding token-id inputs on air-gapped hosts "
        "(checked against OpenAI's published hash).",
    )
    tiktoken_load_timeout_s: float = Field(
        10.0, description="How long startup waits for cl100k_base when no local file is set."
    )

    # --- Upstream APIs ---
    upstreams: dict[str, UpstreamConfig] = Field(
        default_factory=dict,
        description="Models forwarded to an upstream OpenAI-compatible API, by the name clients use (JSON; "
        "see docs/gateway.md#upstream-models). Such a name wins over a local model or alias of the same name.",
    )
    shadow_max_in_flight: int = Field(
        4, ge=1, description="Shadow copies (see `upstreams`) running at once; more are dropped and counted."
    )

    # --- Teams and quotas (keys: `api_keys`, `api_keys_file`; see docs/gateway.md#teams-keys-and-quotas) ---
    default_team: str = Field(
        "default", pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="Team of the keys that name none (the old one-key-per-line format), and of every request "
        "while auth is off.",
    )
    quota_requests_per_minute: int = Field(
        0, ge=0, description="Requests per minute of a key that sets no `rpm=`; 0: no limit."
    )
    quota_tokens_per_minute: int = Field(
        0, ge=0, description="Tokens per minute of a key that sets no `tpm=`; 0: no limit."
    )
    quota_tokens_per_day: int = Field(
        0, ge=0, description="Tokens per day of a key that sets no `tpd=`; 0: no limit."
    )
    quota_store: Literal["memory", "redis"] = Field(
        "memory",
        description="Where quotas are counted: memory (each gateway process enforces its own) or redis "
        "(`EMBEDDINGS_REDIS_URL`; every gateway sharing it enforces them together).",
    )
    api_keys_reload_s: float = Field(
        2.0, ge=0, description="How often the key file is checked for changes (0: only on SIGHUP)."
    )

    # --- Batch ---
    batch_store: SecretStr | None = Field(
        None,
        description="Where `/v1/files` and `/v1/batches` keep files and jobs: sqlite:///path (one file; in "
        "containers on a volume) or redis://host:port/db (shared by every gateway; may hold a password, so it "
        f"is redacted); unset: {DEFAULT_BATCH_STORE}.",
    )
    batch_enabled: bool = Field(True, description="Serve `/v1/files` and `/v1/batches` and run batch jobs.")
    batch_max_requests: int = Field(50_000, ge=1, description="Most lines (requests) in one batch file; above: 413.")
    batch_max_upload_bytes: int = Field(
        200 * 1024 * 1024, ge=1024, description="Most bytes in one `/v1/files` upload; above it: 413."
    )
    batch_chunk_lines: int = Field(4, ge=1, description="Lines a runner sends at once (a small chunk).")
    batch_page_lines: int = Field(
        32, ge=1, description="Output lines read from the store at a time while a file's content is streamed."
    )
    batch_yield_in_flight: int = Field(
        1, ge=1, description="Online requests in flight at or above which the runner waits before its next chunk."
    )
    batch_max_wait_s: float = Field(
        1.0, ge=0, description="Longest wait for online traffic to go idle; then one chunk is sent anyway."
    )
    batch_poll_s: float = Field(1.0, gt=0, description="How often a runner looks for a job to run.")
    batch_lease_s: float = Field(
        30.0, gt=0, description="A runner's lease on a job; renewed every third of it, taken over once expired."
    )
    batch_retries: int = Field(
        5, ge=0, description="Retries of a line that failed with 429/503/504 before it goes to the error file."
    )

    @field_validator("models", mode="before")
    @classmethod
    def _empty_list_is_none(cls, v):
        return None if v in ("", []) else v

    @field_validator("triton_metrics_url", mode="before")
    @classmethod
    def _empty_url_is_none(cls, v):
        return None if v == "" else v

    def load_api_keys(self) -> list[str]:
        """Keys from `api_keys` and `api_keys_file`, as plain strings (for the auth check only)."""
        keys = [k.get_secret_value() for k in self.api_keys]
        if self.api_keys_file is not None:
            for line in self.api_keys_file.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    keys.append(line)
        return [k for k in keys if k]
