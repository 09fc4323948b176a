"""The chaos run's load and its checks: texts and their references (computed in-process before the run),
clients of the official openai package (default retries) sending embeddings (float, base64, token ids,
`dimensions`) and rerank calls, batch jobs through /v1/files and /v1/batches; every answer checked."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import openai

COSINE, SCORE_TOL = 0.9999, 1e-4
RESERVED = 128  # long texts of the first model for the graceful stop's requests (8 x 16)
WORDS = (
    "the server model batch token request latency vector search index query document cluster memory queue "
    "embedding semantic similarity language network cloud private data cost scale inference engine length "
    "sentence paragraph context window retrieval answer question customer support ticket invoice contract "
    "policy report summary weather travel music history science river house school market night city world"
).split()


def make_texts(n: int, seed: int, low: int = 4, high: int = 30) -> list[str]:
    rng = random.Random(seed)
    return [f"{i} " + " ".join(rng.choices(WORDS, k=rng.randint(low, high))) for i in range(n)]


@dataclass
class References:
    """Per embedding model, text -> its vector (the load's pool, and long texts the load never sends, kept for
    the graceful stop); per (query, document), its score."""

    vectors: dict[str, dict[str, np.ndarray]]
    pools: dict[str, list[str]]
    reserved: dict[str, list[str]]
    queries: list[str]
    documents: list[str]
    scores: dict[tuple[str, str], float]
    reranker: str

    def vector_ok(self, model: str, text: str, got: np.ndarray) -> bool:
        ref = self.vectors[model][text][: len(got)]
        cos = float(got @ ref / (np.linalg.norm(got) * np.linalg.norm(ref) + 1e-12))
        return cos >= COSINE

    def all_ok(self, model: str, data: list[dict], texts: list[str]) -> bool:
        """A response's `data` (float vectors) holds each of `texts`' vectors, in order."""
        return len(data) == len(texts) and all(
            d["index"] == i and self.vector_ok(model, texts[i], np.asarray(d["embedding"], np.float32))
            for i, d in enumerate(data))

    def score_ok(self, query: str, document: str, got: float) -> bool:
        return abs(self.scores[(query, document)] - got) <= SCORE_TOL


def _encoded(model: str, source: str, texts: list[str], cache: Path) -> np.ndarray:
    """sentence-transformers' vectors of `texts`, kept in `cache` under the texts' hash (computed once)."""
    from sentence_transformers import SentenceTransformer

    key = hashlib.sha256("\n".join([source, *texts]).encode()).hexdigest()[:16]
    path = cache / f"references-{model}-{key}.npy"
    if path.exists():
        return np.load(path)
    vectors = SentenceTransformer(source, device="cpu").encode(texts, batch_size=64, convert_to_numpy=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def references(sources: dict[str, str], reranker: tuple[str, str], texts: dict[str, int], cache: Path) -> References:
    """sentence-transformers vectors for `texts[model]` texts per model (and the reserved long texts) and
    CrossEncoder scores for every (query, document) pair, computed before the run (the vectors once per cache)."""
    from sentence_transformers import CrossEncoder

    vectors, pools, reserved = {}, {}, {}
    for seed, (model, source) in enumerate(sources.items()):
        pools[model] = make_texts(texts[model], seed)
        reserved[model] = make_texts(RESERVED, 50, 60, 120) if seed == 0 else []
        both = pools[model] + reserved[model]
        vectors[model] = dict(zip(both, _encoded(model, source, both, cache)))
    queries, documents = make_texts(40, 100, 3, 8), make_texts(120, 101)
    pairs = [(q, d) for q in queries for d in documents]
    scores = CrossEncoder(reranker[1], device="cpu").predict(pairs, batch_size=256)
    return References(vectors, pools, reserved, queries, documents, dict(zip(pairs, map(float, scores))),
                      reranker[0])


@dataclass
class Call:
    kind: str
    t0: float
    t1: float
    failed: bool = False
    wrong: bool = False
    error: str = ""


@dataclass
class Record:
    """Every call of the run, appended by many threads."""

    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, call: Call) -> None:
        with self.lock:
            self.calls.append(call)


def _embeddings(client: openai.OpenAI, refs: References, rng: random.Random, kind: str) -> bool:
    """One embeddings call of `kind`; True when every vector matches its reference."""
    model = rng.choice(list(refs.vectors))
    texts = rng.sample(refs.pools[model], rng.randint(1, 4))
    args: dict = {"model": model, "input": texts, "encoding_format": "float"}
    if kind == "base64":
        args["encoding_format"] = "base64"
    elif kind == "token_ids":
        args["input"] = [TOKENS.encode(t) for t in texts]
    elif kind == "dimensions":
        args["dimensions"] = rng.choice((64, 128, 256))
    res = client.embeddings.create(**args)
    if [d.index for d in res.data] != list(range(len(texts))):
        return False
    for text, item in zip(texts, res.data):
        emb = item.embedding
        got = np.frombuffer(base64.b64decode(emb), "<f4") if isinstance(emb, str) else np.asarray(emb, np.float32)
        if args.get("dimensions", len(got)) != len(got) or not refs.vector_ok(model, text, got):
            return False
    return True


def _rerank(client: openai.OpenAI, refs: References, rng: random.Random) -> bool:
    query, docs = rng.choice(refs.queries), rng.sample(refs.documents, rng.randint(2, 8))
    res = client.post("/rerank", cast_to=object, body={"model": refs.reranker, "query": query, "documents": docs})
    results = res["results"]
    if sorted(r["index"] for r in results) != list(range(len(docs))):
        return False
    return all(refs.score_ok(query, docs[r["index"]], r["relevance_score"]) for r in results)


class _Tokens:
    """cl100k_base, loaded on first use (as OpenAI clients send token ids)."""

    _enc = None

    def encode(self, text: str) -> list[int]:
        if _Tokens._enc is None:
            from triton_embeddings.gateway.http.token_ids import load_cl100k

            _Tokens._enc = load_cl100k(None)
        return _Tokens._enc.encode(text)


TOKENS = _Tokens()
KINDS = ("float", "base64", "token_ids", "dimensions", "rerank")


def one_call(client: openai.OpenAI, refs: References, rng: random.Random, record: Record) -> None:
    kind = rng.choice(KINDS)
    t0 = time.monotonic()
    try:
        ok = _rerank(client, refs, rng) if kind == "rerank" else _embeddings(client, refs, rng, kind)
        record.add(Call(kind, t0, time.monotonic(), wrong=not ok))
    except openai.OpenAIError as e:
        record.add(Call(kind, t0, time.monotonic(), failed=True, error=f"{type(e).__name__}: {e}"[:300]))


def client_for(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused")  # the client's default retries and timeout


def clients(url: str, refs: References, record: Record, n: int, stop: threading.Event, seed: int = 0,
            rate: float = 5.0):
    """`n` threads, each starting a call every 1/`rate` s (or when its last one ends), until `stop` is set."""
    def loop(i: int) -> None:
        client, rng = client_for(url), random.Random(seed * 1000 + i)
        while not stop.is_set():
            due = time.monotonic() + 1.0 / rate
            one_call(client, refs, rng, record)
            stop.wait(max(0.0, due - time.monotonic()))

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    return threads


# ---- batch jobs -----------------------------------------------------------------------------------------
def batch_input(refs: References, rng: random.Random, lines: int, tag: str) -> tuple[bytes, dict]:
    """A JSONL of embeddings lines (2 texts each, MiniLM-sized pool of the first model); custom_id -> texts."""
    model = next(iter(refs.vectors))
    wanted, rows = {}, []
    for i in range(lines):
        texts = rng.sample(refs.pools[model], 2)
        wanted[f"{tag}-{i}"] = (model, texts)
        rows.append({"custom_id": f"{tag}-{i}", "method": "POST", "url": "/v1/embeddings",
                     "body": {"model": model, "input": texts}})
    return "".join(json.dumps(r) + "\n" for r in rows).encode(), wanted


def submit(client: openai.OpenAI, data: bytes, tag: str):
    file = client.files.create(file=(f"{tag}.jsonl", io.BytesIO(data)), purpose="batch")
    return client.batches.create(input_file_id=file.id, endpoint="/v1/embeddings", completion_window="24h")


def wait_batch(client: openai.OpenAI, batch_id: str, timeout: float = 600.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch
        time.sleep(0.5)
    raise TimeoutError(f"batch {batch_id} still {batch.status} after {timeout:.0f} s")


@dataclass
class BatchCheck:
    lines: int
    answered: int = 0
    duplicated: int = 0
    missing: int = 0
    wrong: int = 0
    status: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "completed" and self.answered == self.lines and not (self.missing or self.wrong
                                                                                   or self.duplicated)


def check_batch(client: openai.OpenAI, batch, wanted: dict, refs: References) -> BatchCheck:
    """Every line answered exactly once, 200, each vector right; nothing in the error file."""
    out = BatchCheck(len(wanted), status=batch.status)
    seen: dict[str, int] = {}
    if batch.output_file_id:
        for line in client.files.content(batch.output_file_id).text.splitlines():
            item = json.loads(line)
            seen[item["custom_id"]] = seen.get(item["custom_id"], 0) + 1
            model, texts = wanted[item["custom_id"]]
            resp = item["response"]
            vectors = [np.asarray(d["embedding"], np.float32) for d in resp["body"]["data"]]
            good = resp["status_code"] == 200 and len(vectors) == len(texts)
            out.wrong += not (good and all(refs.vector_ok(model, t, v) for t, v in zip(texts, vectors)))
    out.answered = len(seen)
    out.duplicated = sum(n - 1 for n in seen.values())
    out.missing = len(set(wanted) - set(seen))
    return out


def batch_loop(url: str, refs: References, record: Record, stop: threading.Event, checks: list[BatchCheck],
               lines: int = 12) -> threading.Thread:
    """One batch job at a time until `stop`: create, poll, download, check."""
    def loop() -> None:
        client, rng, n = client_for(url), random.Random(7), 0
        while not stop.is_set():
            n, t0 = n + 1, time.monotonic()
            try:
                data, wanted = batch_input(refs, rng, lines, f"job{n}")
                check = check_batch(client, wait_batch(client, submit(client, data, f"job{n}").id), wanted, refs)
                checks.append(check)
                record.add(Call("batch", t0, time.monotonic(), failed=check.status != "completed",
                                wrong=check.status == "completed" and not check.ok, error=str(check)))
            except (openai.OpenAIError, TimeoutError) as e:
                record.add(Call("batch", t0, time.monotonic(), failed=True, error=f"{type(e).__name__}: {e}"[:300]))

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread
