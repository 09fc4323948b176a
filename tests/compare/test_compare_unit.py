"""Units of embeddings-compare: spec parsing, batching, corpus formats, metrics and cost arithmetic."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from triton_embeddings.compare import metrics
from triton_embeddings.compare.cache import VectorCache, text_hash
from triton_embeddings.compare.client import batches, token_bound
from triton_embeddings.compare.corpus import CorpusError, read_qrels, read_texts
from triton_embeddings.compare.cost import PRICES_PER_1M, Speed, cost, hourly_cost_per_1m, speed
from triton_embeddings.compare.endpoint import parse_spec


@pytest.mark.parametrize(("spec", "url", "model"), [
    ("https://api.openai.com/v1:text-embedding-3-small", "https://api.openai.com/v1", "text-embedding-3-small"),
    ("http://localhost:8080/v1:all-MiniLM-L6-v2", "http://localhost:8080/v1", "all-MiniLM-L6-v2"),
    ("http://127.0.0.1:11434/v1:nomic-embed-text:latest", "http://127.0.0.1:11434/v1", "nomic-embed-text:latest"),
    ("http://gw:8080:m", "http://gw:8080", "m"),
])
def test_parse_spec(spec, url, model):
    ep = parse_spec("a", spec)
    assert (ep.base_url, ep.model) == (url, model)


@pytest.mark.parametrize("spec", ["localhost:8080:m", "http://localhost:8080/v1", "ftp://x/v1:m", ""])
def test_parse_spec_rejects(spec):
    with pytest.raises(ValueError, match="URL:MODEL"):
        parse_spec("a", spec)


def test_api_key_from_the_named_variable(monkeypatch):
    ep = parse_spec("a", "https://x/v1:m", key_env="MY_KEY")
    monkeypatch.delenv("MY_KEY", raising=False)
    with pytest.raises(ValueError, match="MY_KEY"):
        ep.api_key()
    monkeypatch.setenv("MY_KEY", "sk-1")
    assert ep.api_key() == "sk-1"
    assert "sk-1" not in ep.cache_key and parse_spec("a", "https://x/v1:m").api_key() == "unused"


def test_batches_respect_input_and_token_limits():
    texts = ["x" * 10] * 25 + ["y" * 100] + ["z"] * 3
    out = batches(texts, max_inputs=8, max_tokens=60)
    assert sorted(i for b in out for i in b) == list(range(len(texts)))
    assert all(len(b) <= 8 for b in out)
    for b in out:
        assert len(b) == 1 or sum(token_bound(texts[i]) for i in b) <= 60
    assert [25] in out, "a text over the token budget goes alone"
    assert token_bound("é") == 4  # two UTF-8 bytes plus two special tokens


def test_read_texts_formats(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"_id": "a", "title": "T", "text": "one"}\n\n{"_id": "b", "text": "two"}\n')
    got = read_texts(tmp_path / "c.jsonl", title_field="title")
    assert (got.ids, got.texts) == (["a", "b"], ["T one", "two"])
    (tmp_path / "c.csv").write_text('id,body\n7,"hello, world"\n8,bye\n')
    got = read_texts(tmp_path / "c.csv", text_field="body")
    assert (got.ids, got.texts) == (["7", "8"], ["hello, world", "bye"])
    (tmp_path / "c.tsv").write_text("body\nx, y\n")
    assert read_texts(tmp_path / "c.tsv", text_field="body").texts == ["x, y"]
    (tmp_path / "c.txt").write_text("first\n\nsecond\n")
    got = read_texts(tmp_path / "c.txt")
    assert (got.ids, got.texts) == (["0", "1"], ["first", "second"])


@pytest.mark.parametrize(("name", "content", "match"), [
    ("c.jsonl", '{"text": 1}\n', "no string field"),
    ("c.jsonl", "not json\n", "not JSON"),
    ("c.jsonl", '{"id": 1, "text": "a"}\n{"id": 1, "text": "b"}\n', "not unique"),
    ("c.csv", "a,b\n1,2\n", "no column"),
    ("c.txt", "\n\n", "no texts"),
])
def test_read_texts_errors_name_the_problem(tmp_path, name, content, match):
    (tmp_path / name).write_text(content)
    with pytest.raises(CorpusError, match=match):
        read_texts(tmp_path / name)


def test_read_qrels_beir_and_trec(tmp_path):
    (tmp_path / "b.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t0\nq2\td3\t1\n")
    (tmp_path / "t.txt").write_text("q1 0 d1 2\nq1 0 d2 0\nq2 0 d3 1\n")
    assert read_qrels(tmp_path / "b.tsv") == read_qrels(tmp_path / "t.txt") == {
        "q1": {"d1": 2, "d2": 0}, "q2": {"d3": 1}}
    (tmp_path / "bad.tsv").write_text("q1 d1 1\nq1 d1\n")
    with pytest.raises(CorpusError, match="columns"):
        read_qrels(tmp_path / "bad.tsv")


def test_ndcg_and_recall_by_hand():
    grades = {"a": 2, "b": 1}
    assert metrics.ndcg_at_k(["a", "b", "c"], grades) == pytest.approx(1.0)
    # b first, a third: (1/log2(2) + 2/log2(4)) / (2/log2(2) + 1/log2(3))
    assert metrics.ndcg_at_k(["b", "c", "a"], grades) == pytest.approx((1 + 1) / (2 + 1 / np.log2(3)))
    assert metrics.ndcg_at_k(["c", "d"], grades) == 0.0
    assert metrics.recall_at_k(["c", "a"], grades) == 0.5
    assert metrics.recall_at_k(["c", "a"], grades, k=1) == 0.0


def test_top_k_chunks_and_excludes_self():
    rng = np.random.default_rng(1)
    docs = rng.standard_normal((50, 6)).astype(np.float32)
    queries = docs[[3, 7]]
    plain = metrics.top_k(queries, docs, 5)
    assert list(plain[:, 0]) == [3, 7]
    chunked = metrics.top_k(queries, docs, 5, exclude=np.array([3, 7]), chunk=7)
    sims = metrics.normalize(queries) @ metrics.normalize(docs).T
    sims[[0, 1], [3, 7]] = -np.inf
    assert (chunked == np.argsort(-sims, axis=1)[:, :5]).all()


def test_agreement_of_a_space_with_itself_and_with_noise():
    rng = np.random.default_rng(2)
    docs = rng.standard_normal((300, 16)).astype(np.float32)
    queries, exclude = docs[:40], np.arange(40)
    same = metrics.agreement(queries, docs, queries, docs, exclude)
    assert same.overlap == {1: 1.0, 10: 1.0, 100: 1.0} and same.top1 == 1.0 and same.spearman == pytest.approx(1.0)
    other = rng.standard_normal((300, 16)).astype(np.float32)
    noise = metrics.agreement(queries, docs, other[:40], other, exclude)
    assert noise.overlap[10] < 0.2 and abs(noise.spearman) < 0.2
    assert noise.overlap[100] == pytest.approx(100 / 299, abs=0.1)  # chance level


def test_quality_needs_matching_labels():
    v = np.eye(3, dtype=np.float32)
    queries = np.array([[1, 0, 0], [0, 1, 0.5], [0, 0, 1]], dtype=np.float32)  # q1 ranks d1, d2, d0
    q = metrics.quality(queries, v, ["q0", "q1", "q2"], ["d0", "d1", "d2"], {"q0": {"d0": 1}, "q1": {"d2": 1}})
    assert q.queries == 2 and q.ndcg10 == pytest.approx((1 + 1 / np.log2(3)) / 2) and q.recall100 == 1.0
    with pytest.raises(ValueError, match="ids"):
        metrics.quality(v, v, ["x"] * 3, ["d0", "d1", "d2"], {"q0": {"d0": 1}})


def test_cost_sources():
    measured = Speed(requests=10, inputs=1000, tokens=36_000, wall_s=10.0, p50_s=0.1, p95_s=0.2, retries=0,
                     concurrency=4)
    assert hourly_cost_per_1m(3.6, 1000.0) == pytest.approx(1.0)  # $3.60/h at 1000 tokens/s
    c = cost("mine", None, 3.6, "GPU", measured)
    assert c.per_1m == pytest.approx(3.6 / (3600 * 3600) * 1e6) and "3,600 tokens/s" in c.basis
    assert cost("text-embedding-3-small", None, None, "", None).per_1m == PRICES_PER_1M["text-embedding-3-small"]
    assert cost("text-embedding-3-small", 0.5, None, "", None).per_1m == 0.5
    assert cost("mine", None, None, "", measured).per_1m is None
    assert cost("mine", None, 1.0, "GPU", None).per_1m is None


def test_speed_from_records():
    assert speed([], []) is None
    s = speed([(4, 40, 0.1), (4, 40, 0.3), (2, 20, 0.2)], [(10, 100, 0.5, 2, 1)])
    assert (s.tokens_per_s, s.inputs_per_s, s.p50_s, s.retries) == (200.0, 20.0, pytest.approx(0.2), 1)


def test_vector_cache_roundtrip(tmp_path):
    cache = VectorCache(tmp_path / "c.sqlite")
    hashes = [text_hash(t) for t in ("a", "b")]
    cache.put("ep", hashes, np.array([[1, 2], [3, 4]], dtype=np.float32), [1.5, 2.5])
    cache.close()
    cache = VectorCache(tmp_path / "c.sqlite")
    got = cache.get("ep", [*hashes, text_hash("c")])
    assert set(got) == set(hashes) and list(got[hashes[1]][0]) == [3, 4] and got[hashes[0]][1] == 1.5
    assert cache.get("other", hashes) == {}


def test_price_table_in_the_docs_matches_the_code_and_the_rules():
    from triton_embeddings.compare.cost import PRICES_READ_ON

    root = Path(__file__).parents[2]
    text = (root / "docs" / "migration.md").read_text()
    rows = {m: float(p) for m, p in re.findall(r"^\| `([\w.-]+)` \| \$([\d.]+) \|", text, re.M)}
    assert rows == PRICES_PER_1M
    assert PRICES_READ_ON.split(" ")[0] in text
    groups = yaml.safe_load((root / "monitoring" / "cost.yml").read_text())["groups"]
    rules = {r["labels"]["model"]: float(r["expr"][len("vector("):-1]) for g in groups for r in g["rules"]
             if r["record"] == "embeddings:upstream_price_per_1m_tokens_usd"}
    assert rules == PRICES_PER_1M


def test_pricing_precedence_flag_then_hourly_then_table():
    from triton_embeddings.compare.run import Pricing, _price

    measured = Speed(requests=1, inputs=10, tokens=3600, wall_s=1.0, p50_s=0.1, p95_s=0.1, retries=0,
                     concurrency=1)
    cloud = parse_spec("a", "https://api.openai.com/v1:text-embedding-3-small")
    local = parse_spec("b", "http://gw:8080/v1:all-MiniLM-L6-v2")
    pricing = Pricing(default_hour=3.6, default_hour_label="GPU")
    assert _price(cloud, measured, pricing).per_1m == PRICES_PER_1M["text-embedding-3-small"]
    assert _price(local, measured, pricing).per_1m == pytest.approx(3.6 / (3600 * 3600) * 1e6)
    flagged = Pricing(per_1m={"b": 0.5}, hour={"a": 7.2}, default_hour=3.6)
    assert _price(local, measured, flagged).per_1m == 0.5
    assert _price(cloud, measured, flagged).per_1m == pytest.approx(7.2 / (3600 * 3600) * 1e6)
    assert _price(local, measured, Pricing()).per_1m is None


def test_retry_delay_honours_retry_after_with_jitter():
    import httpx
    import openai

    from triton_embeddings.compare.client import retry_delay

    request = httpx.Request("POST", "http://x/v1/embeddings")
    limited = openai.RateLimitError("slow down", response=httpx.Response(429, headers={"retry-after": "3"},
                                                                         request=request), body=None)
    delays = [retry_delay(limited, 0) for _ in range(50)]
    assert all(3 <= d <= 4.5 for d in delays) and len(set(delays)) > 1, "jittered, never under Retry-After"
    plain = openai.APIConnectionError(request=request)
    assert 0.5 <= retry_delay(plain, 0) <= 0.75 and 4 <= retry_delay(plain, 3) <= 6
    assert retry_delay(plain, 20) <= 45
