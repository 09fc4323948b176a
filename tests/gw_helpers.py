"""Helpers shared by the gateway tests: a fake Triton backend (unit tests only) and a real gateway process."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

from triton_embeddings.defaults import DEFAULT_MODEL
from triton_embeddings.gateway.backends.base import EmbedResult, ModelInfo, RerankModelInfo, RerankResult
from triton_embeddings.local.processes import free_port, stop_process, wait_http

ROOT = Path(__file__).resolve().parents[1]
__all__ = ["DEFAULT_MODEL", "ROOT", "FakeBackend", "GatewayProcess", "concurrently_while_frozen", "fake_vector",
           "free_port", "inference_count", "redis_process", "running_gateway", "wait_http"]


def fake_vector(text: str, dim: int) -> np.ndarray:
    """A deterministic unit vector per text."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


class FakeBackend:
    """A `Backend` for unit tests of gateway logic: records calls; tokens = words + 2, truncated above
    max_seq_length. Every behaviour tested with it also has a test against the real Triton."""

    def __init__(self, dim: int = 8, max_batch_size: int = 4, max_seq_length: int = 16, reranker: bool = False):
        self.models: dict[str, ModelInfo | RerankModelInfo] | None = {
            "fake-model": ModelInfo("fake-model", dim, max_seq_length, max_batch_size, True, "mean", "src", "fp", 1),
        }
        if reranker:  # logit = query words the document contains - 1
            info = RerankModelInfo("fake-reranker", max_seq_length, max_batch_size, "sigmoid", "src", "fp", 1)
            self.models[info.name] = info
        self.calls: list[list[str]] = []
        self.fail: Exception | None = None
        self.delay = 0.0
        self.is_ready = True
        self.in_flight = 0
        self.max_in_flight_seen = 0
        self.unknown_seen = 0

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    local_known = True

    def unknown_model_seen(self) -> None:
        self.unknown_seen += 1

    async def ready(self, names: list[str]) -> tuple[bool, str]:
        return (True, "ready") if self.is_ready else (False, "Triton is not live")

    async def windows(self, model: str, texts: list[str], prompt_names=None, request_id: str = "") -> list:
        """Windows of at most max_seq_length - 2 words (fake tokens: words + 2), one word of overlap."""
        size = self.models[model].max_seq_length - 2
        out = []
        for text in texts:
            words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
            starts = range(0, max(len(words) - 1, 1), size - 1) if len(words) > size else [0]
            spans = [words[a : a + size] for a in starts]
            out.append([(w[0][0], w[-1][1], len(w) + 2) for w in spans])
        return out

    async def embed(self, model: str, texts: list[str], request_id: str = "", options=None) -> EmbedResult:
        info = self.models[model]
        assert len(texts) <= info.max_batch_size, "the gateway sent more than max_batch_size"
        self.calls.append(list(texts))
        self.options = getattr(self, "options", []) + [options]
        await self._work()
        words = np.array([len(t.split()) + 2 for t in texts])
        return EmbedResult(
            np.stack([fake_vector(t, info.dimension) for t in texts]),
            np.minimum(words, info.max_seq_length),
            words > info.max_seq_length,
        )

    async def rerank(self, model: str, queries: list[str], documents: list[str], request_id: str = "") -> RerankResult:
        """Logit = number of query words the document contains, minus 1; tokens = words of both + 3."""
        info = self.models[model]
        assert len(documents) <= info.max_batch_size, "the gateway sent more than max_batch_size pairs"
        self.calls.append(list(zip(queries, documents)))
        await self._work()
        logits = np.array([len(set(q.split()) & set(d.split())) - 1.0 for q, d in zip(queries, documents)])
        words = np.array([len(q.split()) + len(d.split()) + 3 for q, d in zip(queries, documents)])
        return RerankResult((1 / (1 + np.exp(-logits))).astype(np.float32), logits.astype(np.float32),
                            np.minimum(words, info.max_seq_length), words > info.max_seq_length)

    async def _work(self) -> None:
        self.in_flight += 1
        self.max_in_flight_seen = max(self.max_in_flight_seen, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.fail is not None:
                raise self.fail
        finally:
            self.in_flight -= 1


class GatewayProcess:
    """`python -m triton_embeddings.gateway` on a free loopback port, configured through EMBEDDINGS_* variables."""

    def __init__(self, log_path: Path, **settings):
        self.port = free_port()
        self.log_path = log_path
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        env.update({f"EMBEDDINGS_{k.upper()}": str(v) for k, v in settings.items()})
        env["EMBEDDINGS_HOST"] = "127.0.0.1"
        env["EMBEDDINGS_PORT"] = str(self.port)
        self.env = env
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: str = "/ready") -> GatewayProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "triton_embeddings.gateway"],
            env=self.env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_http(self.url + wait, timeout=180.0, proc=self.proc)  # a starved machine, not a hang
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        code = stop_process(self.proc, 20)
        self._log.close()
        self.proc = None
        return code

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def running_gateway(tmp_path: Path, wait: str = "/ready", **settings):
    gw = GatewayProcess(tmp_path / f"gateway-{time.monotonic_ns()}.log", **settings).start(wait)
    try:
        yield gw
    finally:
        gw.stop()


def triton_error_counts(exposition: str) -> dict[str, float]:
    """Non-zero `gateway_triton_errors_total` by `kind`, from a `/metrics` exposition (every kind is
    exposed from the start, at 0)."""
    out = {}
    for line in exposition.splitlines():
        if line.startswith("gateway_triton_errors_total{") and float(line.split()[-1]):
            kind = line.split('kind="', 1)[1].split('"', 1)[0]
            out[kind] = float(line.split()[-1])
    return out


def inference_count(metrics_url: str, model: str = DEFAULT_MODEL) -> float:
    """Triton's `nv_inference_count` of `model`: the rows (texts, pairs) it has run."""
    prefix = f'nv_inference_count{{model="{model}",'
    for line in httpx.get(metrics_url, timeout=5).text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0


def gauge(client: httpx.Client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not exposed")


def concurrently_while_frozen(triton, gateway_url: str, path: str, body: dict, n: int) -> list[httpx.Response]:
    """`n` identical requests, all inside the gateway while Triton is frozen (SIGSTOP), so that every one of them
    misses at once; the answers once Triton runs again."""
    with httpx.Client(base_url=gateway_url, timeout=30) as c, ThreadPoolExecutor(n) as pool:
        os.kill(triton.process.pid, signal.SIGSTOP)
        try:
            futures = [pool.submit(httpx.post, gateway_url + path, json=body, timeout=30) for _ in range(n)]
            deadline = time.monotonic() + 10
            while gauge(c, "gateway_in_flight_requests") < n:
                assert time.monotonic() < deadline, "the requests never all reached the gateway"
                time.sleep(0.05)
        finally:
            os.kill(triton.process.pid, signal.SIGCONT)
        return [f.result() for f in futures]


@contextmanager
def redis_process(binary: str, folder: Path):
    """A real redis-server on a free loopback port, nothing persisted: (process, port, redis.Redis client)."""
    import redis

    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            r.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    try:
        yield proc, port, r
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
