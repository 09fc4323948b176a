"""Retrieval options of one embeddings request (prompt, truncation side, long inputs), as the pipeline sees
them: their per-row Triton inputs, their part of the cache key, and how windows combine.

http/wire.py reads them from the request and validates them against the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from triton_embeddings import contract


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

    @property
    def row_inputs(self) -> tuple[tuple[str, str], ...]:
        """The optional per-row Triton inputs these options send (none for the defaults)."""
        sent = ((contract.PROMPT_NAME, self.prompt_name), (contract.TRUNCATE, self.side))
        return tuple((name, value) for name, value in sent if value)


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
