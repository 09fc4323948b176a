"""Helpers shared by the Triton Python-backend models (imported only inside the Python backend)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from triton_embeddings import contract as c


class TokenCounters:
    """A `<name>{model, kind="real"|"padded"}` counter pair in Triton's /metrics.

    Each metric update is a round trip to Triton's core, which under load waits for a busy core (5% of the
    encoder's time at one update per execution), so counts are added up here and sent at most every
    `flush_every_s`: Triton's counters lag by up to that much traffic, and the models flush in `finalize`.
    """

    def __init__(self, name: str, description: str, model: str, flush_every_s: float = 1.0):
        # Keep the family referenced: Triton drops its metrics once the family object is freed.
        self.family = pb_utils.MetricFamily(name=name, description=description, kind=pb_utils.MetricFamily.COUNTER)
        self.real = self.family.Metric(labels={"model": model, "kind": "real"})
        self.padded = self.family.Metric(labels={"model": model, "kind": "padded"})
        self.flush_every_s = flush_every_s
        self._pending = [0, 0]
        self._flushed_at = time.monotonic()

    def add(self, real: int, padded: int) -> None:
        self._pending[0] += real
        self._pending[1] += padded
        if time.monotonic() - self._flushed_at >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        real, padded = self._pending
        if real or padded:
            self.real.increment(real)
            self.padded.increment(padded)
        self._pending = [0, 0]
        self._flushed_at = time.monotonic()


def model_config(args) -> tuple[dict, Path]:
    """The model's config (Triton's JSON form) and its version folder, from `initialize`'s args."""
    return json.loads(args["model_config"]), Path(args["model_repository"]) / args["model_version"]


def tokenizer_counters(config: dict) -> TokenCounters:
    """The tokens a tokenizer step (single texts or pairs) sends to the encoder."""
    return TokenCounters(
        "embeddings_tokenizer_tokens_total",
        "Tokens the tokenizer sent to the encoder: kind=real (text tokens) or padded (shape)",
        config["name"],
    )


def declares_token_types(config: dict) -> bool:
    return any(o["name"] == c.TOKEN_TYPE_IDS for o in config["output"])


def input_strings(request, name: str, empty: str = "") -> list[str]:
    """A BYTES input as strings. ValueError (this request fails) on bad UTF-8, and on no rows given `empty`."""
    raw = pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)
    if empty and raw.size == 0:
        raise ValueError(f"{name} is empty: {empty}")
    out = []
    for i, item in enumerate(raw):
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{name}[{i}] is not valid UTF-8 (byte {exc.start})") from None
        out.append(str(item))
    return out


def encoder_outputs(enc, with_token_types: bool) -> list:
    """A tokenizer step's output tensors for one request's padded `Encoded` rows."""
    outputs = [
        pb_utils.Tensor(c.INPUT_IDS, enc.input_ids),
        pb_utils.Tensor(c.ATTENTION_MASK, enc.attention_mask),
        pb_utils.Tensor(c.TOKEN_COUNT, enc.token_count),
        pb_utils.Tensor(c.TRUNCATED, np.ascontiguousarray(enc.truncated)),
    ]
    if with_token_types:
        outputs.append(pb_utils.Tensor(c.TOKEN_TYPE_IDS, enc.token_type_ids))
    return outputs


def error_response(message: str):
    """A response that fails one request (the others of the batch are served)."""
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))
