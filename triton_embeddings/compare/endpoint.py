"""Endpoint specs (`URL:MODEL`) and the embedding client over the official `openai` package."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

# A port is never taken for a model name: "http://h:8080/v1" has no model.
_SPEC = re.compile(r"^(?P<url>https?://[^/\s]+(?:/[^:\s]*)?):(?!\d+(?:/|$))(?P<model>\S+)$")


@dataclass(frozen=True)
class Endpoint:
    """One OpenAI-compatible endpoint and model; `label` is the option letter that named it (a, b, ...)."""

    label: str
    base_url: str
    model: str
    key_env: str | None = None
    dimensions: int | None = None

    @property
    def name(self) -> str:
        dims = f" (dimensions={self.dimensions})" if self.dimensions else ""
        return f"{self.label}: {self.model}{dims}"

    @property
    def cache_key(self) -> str:
        """What identifies a vector space: the same text here always gives the same vector."""
        return f"{self.base_url.rstrip('/')}|{self.model}|{self.dimensions or ''}"

    def api_key(self) -> str:
        """The key from `key_env`; local gateways without auth take any non-empty key."""
        if not self.key_env:
            return "unused"
        value = os.environ.get(self.key_env, "")
        if not value:
            raise ValueError(f"endpoint {self.label}: environment variable {self.key_env} is not set or empty")
        return value


def parse_spec(label: str, spec: str, key_env: str | None = None, dimensions: int | None = None) -> Endpoint:
    """`https://api.openai.com/v1:text-embedding-3-small` -> Endpoint. The model starts after the first
    colon that follows the URL's path (so model names may hold colons; give the URL a path such as /v1)."""
    m = _SPEC.match(spec.strip())
    if not m:
        raise ValueError(f"--{label} {spec!r}: expected URL:MODEL, e.g. http://localhost:8080/v1:all-MiniLM-L6-v2")
    return Endpoint(label, m["url"], m["model"], key_env, dimensions)
