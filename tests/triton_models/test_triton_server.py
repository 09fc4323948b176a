"""The exported ensemble served by the real tritonserver, called with tritonclient gRPC."""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from tests.conftest import DEFAULT_MODEL, served
from triton_embeddings.export import triton_config
from triton_embeddings.export.kinds.embedding import cosine

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))
from triton_grpc_client import embed  # noqa: E402

LONG_TEXT = "Dynamic batching on Triton needs equal shapes, so the tokenizer buckets lengths. " * 20
WORDS = "the of and to in is that for it as with was on be by this are server batch token model".split()


@pytest.fixture(scope="module")
def client(triton):
    with grpcclient.InferenceServerClient(triton.grpc_url) as c:
        yield c


def text_input(array: np.ndarray, dtype: str = "BYTES"):
    inp = grpcclient.InferInput("TEXT", list(array.shape), dtype)
    inp.set_data_from_numpy(array)
    return inp


def stats(client, model):
    s = client.get_inference_statistics(model).model_stats[0]
    return s.inference_count, s.execution_count


def token_metrics(triton, family: str) -> dict[str, float]:
    text = urllib.request.urlopen(triton.metrics_url, timeout=5).read().decode()
    return {k: float(v) for k, v in re.findall(family + r'\{kind="(\w+)"[^}]*\} (\S+)', text)}


def test_embeddings_match_sentence_transformers(client, st_model):
    texts = ["hello", "How do I reset my password?", "東京は日本の首都です。", "?!", LONG_TEXT, "word " * 400]
    got, _ = embed(client, DEFAULT_MODEL, texts)
    reference = st_model.encode(texts)
    assert got.shape == (len(texts), 384)
    assert cosine(got, reference).min() >= 0.9999


def test_texts_longer_than_128_tokens_use_the_models_256(client, st_model):
    _, tokens = embed(client, DEFAULT_MODEL, ["word " * 400, LONG_TEXT])
    assert tokens[0] == 256
    assert 128 < tokens[1] <= 256


def test_token_count_equals_the_tokenizers(client, st_model):
    texts = ["hello", "The quick brown fox jumps over the lazy dog.", "naïve café 🚀", LONG_TEXT]
    _, tokens = embed(client, DEFAULT_MODEL, texts)
    expected = st_model.tokenize(texts)["attention_mask"].sum(dim=1).tolist()
    assert tokens.tolist() == expected


def test_truncated_flag(client):
    inp = text_input(np.array([[b"short"], [("word " * 400).encode()]], dtype=object))
    result = client.infer(DEFAULT_MODEL, [inp], outputs=[grpcclient.InferRequestedOutput("TRUNCATED")])
    assert result.as_numpy("TRUNCATED")[:, 0].tolist() == [False, True]


@pytest.mark.parametrize("n", [1, 64])
def test_batches_of_1_and_64(client, st_model, n):
    rng = random.Random(n)
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(1, 120))) for _ in range(n)]
    got, tokens = embed(client, DEFAULT_MODEL, texts)
    assert got.shape == (n, 384) and tokens.shape == (n,)
    assert cosine(got, st_model.encode(texts)).min() >= 0.9999


def test_more_than_max_batch_size_is_rejected_clearly(client):
    with pytest.raises(InferenceServerException, match="batch"):
        embed(client, DEFAULT_MODEL, ["x"] * 65)


async def _concurrent_single_texts(triton, texts):
    async with aioclient.InferenceServerClient(triton.grpc_url) as aio:
        async def one(t):
            inp = aioclient.InferInput("TEXT", [1, 1], "BYTES")
            inp.set_data_from_numpy(np.array([[t.encode()]], dtype=object))
            return (await aio.infer(DEFAULT_MODEL, [inp])).as_numpy("EMBEDDING")[0]

        return await asyncio.gather(*(one(t) for t in texts))


@pytest.fixture(scope="module")
def batching_triton(model_repository, tmp_path_factory):
    """A Triton of its own over a copy of the repository whose encoder runs only batches of 32 requests
    (a preferred batch size, and a 20 s queue delay below the 30 s queue timeout). How many texts the served
    settings batch depends on scheduling: bench/bench.py prints texts per execution."""
    repo = tmp_path_factory.mktemp("batching") / "repo"
    shutil.copytree(model_repository, repo, copy_function=os.link)
    path = repo / f"{DEFAULT_MODEL}_encoder" / "config.pbtxt"
    config = triton_config.parse(path.read_text())
    config.dynamic_batching.preferred_batch_size[:] = [32]
    config.dynamic_batching.max_queue_delay_microseconds = 20_000_000
    path.unlink()  # a hard link to the session repository's file
    path.write_text(triton_config.render(config))
    with served(repo, tmp_path_factory, "triton_batching") as server:
        yield server


def test_concurrent_mixed_lengths_share_one_encoder_execution(batching_triton, st_model):
    """32 single-text requests of 4 lengths are merged into one ragged encoder batch, with right vectors."""
    texts = [("word " * n).strip() for n in (5, 20, 60, 150)] * 8
    random.Random(0).shuffle(texts)
    with grpcclient.InferenceServerClient(batching_triton.grpc_url) as c:
        before = stats(c, f"{DEFAULT_MODEL}_encoder")
        got = asyncio.run(_concurrent_single_texts(batching_triton, texts))
        after = stats(c, f"{DEFAULT_MODEL}_encoder")
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert (inferences, executions) == (32, 1), f"{inferences} texts in {executions} encoder executions"
    assert cosine(np.stack(got), st_model.encode(texts)).min() >= 0.9999


def test_padding_stays_small_on_a_mixed_workload(client, triton):
    rng = random.Random(1)
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(2, 40))) for _ in range(96)]
    texts += [" ".join(rng.choices(WORDS, k=rng.randint(100, 230))) for _ in range(32)]
    rng.shuffle(texts)
    tok0, enc0 = token_metrics(triton, "embeddings_tokenizer_tokens_total"), token_metrics(
        triton, "embeddings_encoder_tokens_total")
    asyncio.run(_concurrent_single_texts(triton, texts))
    # A few multi-text requests too, each padded to its own bucket.
    for start in range(0, 32, 8):
        embed(client, DEFAULT_MODEL, texts[start : start + 8])
    tok1, enc1 = token_metrics(triton, "embeddings_tokenizer_tokens_total"), token_metrics(
        triton, "embeddings_encoder_tokens_total")
    tok_ratio = (tok1["padded"] - tok0["padded"]) / (tok1["real"] - tok0["real"])
    enc_ratio = (enc1["padded"] - enc0["padded"]) / (enc1["real"] - enc0["real"])
    assert tok_ratio <= 1.5, tok_ratio
    assert enc_ratio <= 1.5, enc_ratio


def _expect_error(client, inputs, match):
    with pytest.raises(InferenceServerException, match=match):
        client.infer(DEFAULT_MODEL, inputs)


def test_bad_inputs_get_clear_errors_and_the_server_keeps_serving(client, st_model):
    _expect_error(client, [text_input(np.zeros((0, 1), dtype=object))], "(?i)got 0|batch|empty")
    _expect_error(client, [text_input(np.array([[b"ok"], [b"\xff\xfe bad"]], dtype=object))], "not valid UTF-8")
    wrong_dtype = grpcclient.InferInput("TEXT", [1, 1], "FP32")
    wrong_dtype.set_data_from_numpy(np.zeros((1, 1), dtype=np.float32))
    _expect_error(client, [wrong_dtype], "(?i)data-type|datatype|type")
    _expect_error(client, [text_input(np.array([[b"a", b"b"]], dtype=object))], "(?i)shape")
    _expect_error(client, [], "(?i)expected 1 inputs|input")
    got, _ = embed(client, DEFAULT_MODEL, ["still serving"])
    assert cosine(got, st_model.encode(["still serving"])).min() >= 0.9999


def test_a_bad_request_does_not_fail_its_batch_neighbours(triton):
    async def run():
        async with aioclient.InferenceServerClient(triton.grpc_url) as aio:
            async def one(raw: bytes):
                inp = aioclient.InferInput("TEXT", [1, 1], "BYTES")
                inp.set_data_from_numpy(np.array([[raw]], dtype=object))
                return await aio.infer(DEFAULT_MODEL, [inp])

            payloads = [b"good %d" % i for i in range(12)]
            payloads.insert(5, b"\xc3\x28 invalid")
            return await asyncio.gather(*(one(p) for p in payloads), return_exceptions=True)

    results = asyncio.run(run())
    failed = [i for i, r in enumerate(results) if isinstance(r, Exception)]
    assert failed == [5]
    assert "not valid UTF-8" in str(results[5])


def test_documented_grpc_example_runs(triton):
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "triton_grpc_client.py"), "--url", triton.grpc_url, "hello world"],
        capture_output=True, text=True, timeout=60, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    ).stdout
    assert re.search(r"\s4 tokens\s+dim 384", out), out
