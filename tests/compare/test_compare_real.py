"""embeddings-compare against real endpoints: one real gateway over the real Triton serving all-MiniLM-L6-v2
(fp32) and its int8 export; the fp32 model asked for 8 dimensions is the deliberately poor third endpoint
(MiniLM is not trained for truncation, so 8 of its 384 dimensions keep little of its meaning)."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.compare.conftest import DATA, INT8_MODEL
from tests.conftest import DEFAULT_MODEL
from tests.gw_helpers import running_gateway
from triton_embeddings.compare.cli import main

pytestmark = pytest.mark.slow
PNG = b"\x89PNG\r\n\x1a\n"


def labelled_args(gw, out, cache) -> list[str]:
    v1 = gw.url + "/v1"
    return ["--corpus", str(DATA / "corpus.jsonl"), "--queries", str(DATA / "queries.jsonl"),
            "--qrels", str(DATA / "qrels.tsv"), "--a", f"{v1}:{DEFAULT_MODEL}", "--b", f"{v1}:{INT8_MODEL}",
            "--c", f"{v1}:{DEFAULT_MODEL}", "--c-dimensions", "8", "--gpu-hour-price", "0.5",
            "--out", str(out), "--cache", str(cache), "--no-progress", "--batch-size", "32"]


@pytest.fixture(scope="module")
def labelled_run(two_model_gateway, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    assert main(labelled_args(two_model_gateway, tmp / "out", tmp / "cache.sqlite")) == 0
    return tmp, json.loads((tmp / "out" / "report.json").read_text())


def test_quality_ordering_is_the_known_one(labelled_run):
    _, report = labelled_run
    q = {e["label"]: e["quality"] for e in report["endpoints"]}
    assert q["a"]["queries"] == 30
    assert q["a"]["ndcg@10"] > 0.85 and q["b"]["ndcg@10"] > 0.85, "paraphrase queries: MiniLM finds them"
    assert abs(q["a"]["ndcg@10"] - q["b"]["ndcg@10"]) < 0.1, "int8 keeps fp32's quality"
    assert q["c"]["ndcg@10"] < q["a"]["ndcg@10"] - 0.3, "8 truncated dimensions lose most of it"
    assert q["a"]["recall@100"] == 1.0


def test_agreement_ranks_int8_above_truncation(labelled_run):
    _, report = labelled_run
    ag = {a["endpoint"]: a for a in report["agreement"]}
    assert set(ag) == {"b", "c"} and all(a["reference"] == "a" for a in ag.values())
    assert ag["b"]["overlap@k"]["10"] > 0.7 and ag["b"]["top1"] > 0.9 and ag["b"]["spearman"] > 0.9
    for k in ("1", "10", "100"):
        assert ag["b"]["overlap@k"][k] > ag["c"]["overlap@k"][k]
    assert ag["c"]["spearman"] < ag["b"]["spearman"] - 0.2


def test_speed_cost_and_outputs(labelled_run):
    tmp, report = labelled_run
    for e in report["endpoints"]:
        s = e["speed"]
        assert s["tokens_per_s"] > 0 and 0 < s["p50_s"] <= s["p95_s"] and s["requests"] >= 8
        assert e["tokens"] > 2000, "usage from the gateway's tokenizer"
        assert e["cost_per_1m_tokens_usd"] == pytest.approx(0.5 / (s["tokens_per_s"] * 3600) * 1e6)
        assert "GPU $0.5/h" in e["cost_basis"]
    assert [e["vector_length"] for e in report["endpoints"]] == [384, 384, 8]
    md = (tmp / "out" / "report.md").read_text()
    assert "nDCG@10" in md and "overlap@100" in md and "![Agreement by k](agreement.png)" in md
    for png in ("agreement.png", "cost.png"):
        assert (tmp / "out" / png).read_bytes()[:8] == PNG


def test_a_rerun_is_served_from_the_cache(labelled_run, two_model_gateway):
    tmp, first = labelled_run
    assert all(e["texts_fetched_now"] > 0 for e in first["endpoints"])
    shutil.copy(tmp / "cache.sqlite", tmp / "copy.sqlite")
    assert main(labelled_args(two_model_gateway, tmp / "again", tmp / "copy.sqlite")) == 0
    again = json.loads((tmp / "again" / "report.json").read_text())
    assert [e["texts_fetched_now"] for e in again["endpoints"]] == [0, 0, 0]
    assert [e["quality"] for e in again["endpoints"]] == [e["quality"] for e in first["endpoints"]]
    assert [e["speed"] for e in again["endpoints"]] == [e["speed"] for e in first["endpoints"]]


def test_429_answers_are_retried_after_retry_after(two_model_triton, tmp_path):
    """A gateway admitting one request at a time answers the others 429 with Retry-After; every text
    still gets its vector and the report counts the retried answers."""
    with running_gateway(tmp_path, triton_grpc_url=two_model_triton.grpc_url, triton_metrics_url="",
                         max_in_flight=1, retry_after_s=1) as gw:
        v1 = gw.url + "/v1"
        args = ["--corpus", str(DATA / "corpus.jsonl"), "--sample-queries", "20", "--a", f"{v1}:{DEFAULT_MODEL}",
                "--b", f"{v1}:{INT8_MODEL}", "--batch-size", "8", "--concurrency", "8", "--no-progress",
                "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "c.sqlite")]
        assert main(args) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert sum(e["speed"]["retries"] for e in report["endpoints"]) > 0
    assert all(e["texts_fetched_now"] == 220 for e in report["endpoints"])
    assert report["agreement"][0]["top1"] > 0.8


def test_an_unreachable_endpoint_fails_cleanly(tmp_path, capsys):
    from tests.gw_helpers import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    code = main(["--corpus", str(DATA / "queries.jsonl"), "--a", f"{url}:m", "--b", f"{url}:n",
                 "--max-retries", "0", "--no-progress", "--out", str(tmp_path / "o"),
                 "--cache", str(tmp_path / "c.sqlite")])
    assert code == 1
    assert "APIConnectionError" in capsys.readouterr().err


def test_a_missing_key_variable_fails_before_any_call(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    code = main(["--corpus", str(DATA / "queries.jsonl"), "--a", "https://api.openai.com/v1:text-embedding-3-small",
                 "--a-key-env", "NO_SUCH_KEY", "--b", "http://127.0.0.1:1/v1:m", "--out", str(tmp_path / "o"),
                 "--cache", str(tmp_path / "c.sqlite")])
    assert code == 2 and "NO_SUCH_KEY" in capsys.readouterr().err
