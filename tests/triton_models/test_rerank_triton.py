"""A rerank ensemble and the default embedding model served by one real tritonserver, called over gRPC."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from tests.conftest import DEFAULT_MODEL, RERANK_MODEL
from triton_embeddings import contract as c

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))
from triton_grpc_client import embed  # noqa: E402
from triton_grpc_rerank import is_reranker, rerank  # noqa: E402

WORDS = "the of and to in is that for it as with was on be by this are server batch token model".split()


@pytest.fixture(scope="module")
def client(mixed_triton):
    with grpcclient.InferenceServerClient(mixed_triton.grpc_url) as client:
        yield client


def documents(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.choice([2, 9, 40, 200]))) for _ in range(n)]


def test_scores_match_cross_encoder_predict(client, cross_encoder):
    docs = documents(40, 0) + ["東京は日本の首都です。", "naïve café 🚀", "x " * 600]
    query = "how does the server batch tokens?"
    scores, logits, tokens = rerank(client, RERANK_MODEL, query, docs)
    np.testing.assert_allclose(scores, cross_encoder.predict([(query, d) for d in docs]), atol=1e-4)
    np.testing.assert_allclose(scores, 1 / (1 + np.exp(-logits)), atol=1e-6)
    assert tokens.max() == 128 and tokens.min() > 3


def test_both_kinds_on_one_server(client):
    assert is_reranker(client, RERANK_MODEL) and not is_reranker(client, DEFAULT_MODEL)
    vectors, _ = embed(client, DEFAULT_MODEL, ["still embedding"])
    assert vectors.shape == (1, 384)


def test_concurrent_mixed_length_requests_are_scored_independently(mixed_triton, cross_encoder):
    """Requests batched (and regrouped by length) together inside Triton get their own scores back."""
    cases = [(f"query {i} " * (1 + i % 5), documents(1 + i % 7, i)) for i in range(24)]

    async def one(client, query, docs):
        q = aioclient.InferInput(c.QUERY, [len(docs), 1], "BYTES")
        q.set_data_from_numpy(np.array([[query.encode()]] * len(docs), dtype=np.object_))
        d = aioclient.InferInput(c.DOCUMENT, [len(docs), 1], "BYTES")
        d.set_data_from_numpy(np.array([[x.encode()] for x in docs], dtype=np.object_))
        result = await client.infer(RERANK_MODEL, [q, d], outputs=[aioclient.InferRequestedOutput(c.SCORE)])
        return result.as_numpy(c.SCORE)[:, 0]

    async def run_all():
        async with aioclient.InferenceServerClient(mixed_triton.grpc_url) as client:
            return await asyncio.gather(*(one(client, q, d) for q, d in cases))

    for (query, docs), got in zip(cases, asyncio.run(run_all())):
        np.testing.assert_allclose(got, cross_encoder.predict([(query, d) for d in docs]), atol=1e-4)


def test_mismatched_rows_fail_that_request_only(client):
    q = grpcclient.InferInput(c.QUERY, [1, 1], "BYTES")
    q.set_data_from_numpy(np.array([[b"q"]], dtype=np.object_))
    d = grpcclient.InferInput(c.DOCUMENT, [2, 1], "BYTES")
    d.set_data_from_numpy(np.array([[b"a"], [b"b"]], dtype=np.object_))
    with pytest.raises(InferenceServerException):
        client.infer(RERANK_MODEL, [q, d])
    scores, _, _ = rerank(client, RERANK_MODEL, "q", ["a", "b"])
    assert scores.shape == (2,)


def test_example_prints_documents_best_first(mixed_triton):
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "triton_grpc_rerank.py"), "--url", mixed_triton.grpc_url,
         "--model", RERANK_MODEL, "where is the station", "the station is by the river", "bananas", "x " * 300],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": ""},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    printed = [float(line.split()[0]) for line in out.stdout.splitlines()]
    assert len(printed) == 3 and printed == sorted(printed, reverse=True)


def test_bad_utf8_fails_that_request_with_the_row_named(client):
    q = grpcclient.InferInput(c.QUERY, [2, 1], "BYTES")
    q.set_data_from_numpy(np.array([[b"q"], [b"q"]], dtype=np.object_))
    d = grpcclient.InferInput(c.DOCUMENT, [2, 1], "BYTES")
    d.set_data_from_numpy(np.array([[b"ok"], [b"\xff\xfe bad"]], dtype=np.object_))
    with pytest.raises(InferenceServerException, match=r"DOCUMENT\[1\] is not valid UTF-8 \(byte 0\)"):
        client.infer(RERANK_MODEL, [q, d])
    scores, _, _ = rerank(client, RERANK_MODEL, "q", ["a"])
    assert scores.shape == (1,)
