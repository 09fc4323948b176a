"""On-disk vector cache (SQLite): vectors keyed by (base URL, model, dimensions, text hash), plus the timings
of the calls that filled it, so a re-run reports speed without paying again."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors (
    endpoint TEXT NOT NULL, text_hash BLOB NOT NULL, vector BLOB NOT NULL, tokens REAL NOT NULL,
    PRIMARY KEY (endpoint, text_hash));
CREATE TABLE IF NOT EXISTS calls (
    endpoint TEXT NOT NULL, inputs INTEGER NOT NULL, tokens INTEGER NOT NULL, seconds REAL NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    endpoint TEXT NOT NULL, inputs INTEGER NOT NULL, tokens INTEGER NOT NULL, wall_s REAL NOT NULL,
    concurrency INTEGER NOT NULL, retries INTEGER NOT NULL, at REAL NOT NULL);
"""


def text_hash(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


class VectorCache:
    """One SQLite file; use from one thread."""

    def __init__(self, path: Path | str):
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path))
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def get(self, endpoint: str, hashes: list[bytes]) -> dict[bytes, tuple[np.ndarray, float]]:
        """Cached (vector, tokens) per hash; missing hashes are absent."""
        found: dict[bytes, tuple[np.ndarray, float]] = {}
        for start in range(0, len(hashes), 500):  # SQLite's bound-parameter limit
            chunk = hashes[start:start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(
                f"SELECT text_hash, vector, tokens FROM vectors WHERE endpoint = ? AND text_hash IN ({marks})",
                [endpoint, *chunk],
            )
            for h, blob, tokens in rows:
                found[h] = (np.frombuffer(blob, dtype="<f4"), tokens)
        return found

    def put(self, endpoint: str, hashes: list[bytes], vectors: np.ndarray, tokens: list[float]) -> None:
        rows = [(endpoint, h, np.asarray(v, dtype="<f4").tobytes(), t) for h, v, t in zip(hashes, vectors, tokens)]
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?)", rows)

    def record_call(self, endpoint: str, inputs: int, tokens: int, seconds: float) -> None:
        with self.db:
            self.db.execute("INSERT INTO calls VALUES (?, ?, ?, ?, ?)",
                            (endpoint, inputs, tokens, seconds, time.time()))

    def record_run(self, endpoint: str, inputs: int, tokens: int, wall_s: float, concurrency: int,
                   retries: int) -> None:
        with self.db:
            self.db.execute("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (endpoint, inputs, tokens, wall_s, concurrency, retries, time.time()))

    def calls(self, endpoint: str) -> list[tuple[int, int, float]]:
        """(inputs, tokens, seconds) of every recorded call to the endpoint."""
        return list(self.db.execute("SELECT inputs, tokens, seconds FROM calls WHERE endpoint = ?", (endpoint,)))

    def runs(self, endpoint: str) -> list[tuple[int, int, float, int, int]]:
        """(inputs, tokens, wall_s, concurrency, retries) of every run that called the endpoint."""
        return list(self.db.execute(
            "SELECT inputs, tokens, wall_s, concurrency, retries FROM runs WHERE endpoint = ?", (endpoint,)))
