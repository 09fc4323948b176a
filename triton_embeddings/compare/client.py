"""Embedding a list of texts through one endpoint: cache first, then batched concurrent calls with the
official `openai` client (its retries honour 429/503 and Retry-After), with a progress bar."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import httpx
import numpy as np
import openai
from tqdm import tqdm

from triton_embeddings.compare.cache import VectorCache, text_hash
from triton_embeddings.compare.endpoint import Endpoint

MAX_INPUTS = 2048  # OpenAI's limit per request
MAX_TOKENS = 300_000  # OpenAI's limit per request (summed over inputs)


@dataclass(frozen=True)
class ClientOptions:
    batch_size: int = 128
    max_batch_tokens: int = MAX_TOKENS
    concurrency: int = 4
    max_retries: int = 8
    timeout_s: float = 120.0
    progress: bool = True


def token_bound(text: str) -> int:
    """An upper bound of the tokens a text can cost without its tokenizer: BPE and WordPiece tokens each
    cover at least one byte, plus two special tokens."""
    return len(text.encode("utf-8")) + 2


def batches(texts: list[str], max_inputs: int, max_tokens: int) -> list[list[int]]:
    """Index batches of at most `max_inputs` texts and `max_tokens` bound tokens (a lone longer text
    goes alone: the server truncates or rejects it)."""
    out: list[list[int]] = []
    current: list[int] = []
    budget = 0
    for i, text in enumerate(texts):
        cost = token_bound(text)
        if current and (len(current) >= max_inputs or budget + cost > max_tokens):
            out.append(current)
            current, budget = [], 0
        current.append(i)
        budget += cost
    if current:
        out.append(current)
    return out


class RetryCounter:
    """Counts 429 and 5xx answers the openai client saw (each one it then retried or raised)."""

    def __init__(self):
        self.count = 0

    def __call__(self, response: httpx.Response) -> None:
        if response.status_code == 429 or response.status_code >= 500:
            self.count += 1


def make_client(endpoint: Endpoint, options: ClientOptions, counter: RetryCounter) -> openai.OpenAI:
    http = httpx.Client(
        timeout=options.timeout_s,
        limits=httpx.Limits(max_connections=options.concurrency, max_keepalive_connections=options.concurrency),
        event_hooks={"response": [counter]},
    )
    # Retries are ours (call()): the client's own wait exactly Retry-After, so concurrent callers refused
    # together retry together and collide again.
    return openai.OpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key(), max_retries=0,
                         timeout=options.timeout_s, http_client=http)


RETRYABLE = (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError)  # timeouts included


def retry_delay(error: Exception, attempt: int) -> float:
    """The server's Retry-After when it sent one, else exponential backoff; plus up to 50% jitter."""
    base = min(0.5 * 2**attempt, 30.0)
    response = getattr(error, "response", None)
    try:
        base = max(base, float(response.headers["retry-after"])) if response is not None else base
    except (KeyError, ValueError):
        pass
    return min(base, 60.0) * (1 + 0.5 * random.random())


def call(client: openai.OpenAI, endpoint: Endpoint, texts: list[str], retries: int = 8
         ) -> tuple[np.ndarray, int, float]:
    """One request, retried on 429/5xx/timeouts: (vectors in input order, total tokens, seconds incl. retries)."""
    start = time.perf_counter()
    for attempt in range(retries + 1):
        try:
            vectors, tokens = _create(client, endpoint, texts)
            return vectors, tokens, time.perf_counter() - start
        except RETRYABLE as e:
            if attempt == retries:
                raise
            time.sleep(retry_delay(e, attempt))
    raise AssertionError("unreachable")


def _create(client: openai.OpenAI, endpoint: Endpoint, texts: list[str]) -> tuple[np.ndarray, int]:
    extra = {"dimensions": endpoint.dimensions} if endpoint.dimensions else {}
    response = client.embeddings.create(model=endpoint.model, input=texts, encoding_format="float", **extra)
    rows = sorted(response.data, key=lambda d: d.index)
    vectors = np.asarray([r.embedding for r in rows], dtype=np.float32)
    if vectors.shape[0] != len(texts):
        raise RuntimeError(f"{endpoint.name}: {vectors.shape[0]} embeddings for {len(texts)} inputs")
    return vectors, response.usage.total_tokens if response.usage else 0


def apportion(tokens: int, texts: list[str]) -> list[float]:
    """A request's usage split over its texts by length (usage is reported per request, not per text)."""
    weights = np.array([token_bound(t) for t in texts], dtype=np.float64)
    return list(tokens * weights / weights.sum())


@dataclass
class Embedded:
    """Vectors for a list of texts (in its order) and the tokens they cost (apportioned from usage)."""

    vectors: np.ndarray
    tokens: float
    fetched: int  # texts embedded now; the rest came from the cache


def _run_batches(client, endpoint: Endpoint, todo: list[str], options: ClientOptions,
                 on_done: Callable[[list[str], np.ndarray, int, float], None]) -> None:
    """Send the batches with at most `options.concurrency` in flight; `on_done` runs in this thread."""
    groups = [[todo[i] for i in b] for b in batches(todo, min(options.batch_size, MAX_INPUTS),
                                                     options.max_batch_tokens)]
    with ThreadPoolExecutor(options.concurrency) as pool:
        pending: dict[Future, list[str]] = {}
        for group in groups:
            if len(pending) >= options.concurrency:
                _drain(pending, on_done)
            pending[pool.submit(call, client, endpoint, group, options.max_retries)] = group
        while pending:
            _drain(pending, on_done)


def _drain(pending: dict, on_done) -> None:
    """Wait for at least one call; hand each finished one to `on_done`."""
    done, _ = wait(pending, return_when=FIRST_COMPLETED)
    for future in done:
        group = pending.pop(future)
        vectors, tokens, seconds = future.result()  # raises the openai error after its retries
        on_done(group, vectors, tokens, seconds)


def embed_texts(endpoint: Endpoint, texts: list[str], cache: VectorCache, options: ClientOptions) -> Embedded:
    """Vectors for `texts` from the cache, fetching (and caching) the missing ones."""
    hashes = [text_hash(t) for t in texts]
    key = endpoint.cache_key
    found = cache.get(key, list(dict.fromkeys(hashes)))
    todo = list({h: t for h, t in zip(hashes, texts) if h not in found}.values())
    if todo:
        counter = RetryCounter()
        client = make_client(endpoint, options, counter)
        bar = tqdm(total=len(todo), desc=endpoint.name, unit="text", disable=not options.progress)
        total_tokens = 0

        def on_done(group, vectors, tokens, seconds):
            nonlocal total_tokens
            group_hashes = [text_hash(t) for t in group]
            shares = apportion(tokens, group)
            cache.put(key, group_hashes, vectors, shares)
            cache.record_call(key, len(group), tokens, seconds)
            found.update({h: (v, s) for h, v, s in zip(group_hashes, vectors, shares)})
            total_tokens += tokens
            bar.update(len(group))

        start = time.perf_counter()
        try:
            _run_batches(client, endpoint, todo, options, on_done)
        finally:
            bar.close()
            client.close()
        cache.record_run(key, len(todo), total_tokens, time.perf_counter() - start, options.concurrency,
                         counter.count)
    vectors = np.stack([found[h][0] for h in hashes])
    return Embedded(vectors, float(sum(found[h][1] for h in hashes)), len(todo))
