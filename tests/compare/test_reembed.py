"""embeddings-reembed against the real gateway over the real Triton: a full run, a run killed mid-way and
resumed (with a torn last line), and refusals that protect an index from mixing models."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import openai
import pytest

from tests.compare.conftest import DATA, INT8_MODEL
from tests.conftest import DEFAULT_MODEL
from tests.gw_helpers import ROOT
from triton_embeddings.compare.reembed import main

pytestmark = pytest.mark.slow


def read_output(path) -> dict[str, list[float]]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    ids = [r["id"] for r in lines]
    assert len(ids) == len(set(ids)), "an id was written twice"
    return {r["id"]: r["embedding"] for r in lines}


def big_corpus(path, copies: int) -> list[str]:
    """The test corpus repeated under fresh ids (enough requests to interrupt reliably)."""
    records = [json.loads(line) for line in (DATA / "corpus.jsonl").read_text().splitlines()]
    ids = []
    with path.open("w") as f:
        for c in range(copies):
            for r in records:
                ids.append(f"{r['_id']}-{c}")
                f.write(json.dumps({"_id": ids[-1], "text": r["text"], "lang": "en"}) + "\n")
    return ids


def test_full_run_matches_the_gateway(two_model_gateway, tmp_path):
    out = tmp_path / "vectors.jsonl"
    args = ["--input", str(DATA / "corpus.jsonl"), "--output", str(out), "--url", two_model_gateway.url + "/v1",
            "--model", DEFAULT_MODEL, "--batch-size", "16", "--concurrency", "4", "--no-progress"]
    assert main(args) == 0
    got = read_output(out)
    records = [json.loads(line) for line in (DATA / "corpus.jsonl").read_text().splitlines()]
    assert set(got) == {r["_id"] for r in records}
    client = openai.OpenAI(base_url=two_model_gateway.url + "/v1", api_key="x", max_retries=0)
    sample = records[::37]
    want = client.embeddings.create(model=DEFAULT_MODEL, input=[r["text"] for r in sample])
    for r, d in zip(sample, want.data):
        assert np.allclose(got[r["_id"]], d.embedding, atol=1e-6)
    assert main(args) == 0, "a finished job re-run does nothing"
    assert read_output(out) == got


def test_killed_run_resumes_without_gaps_or_duplicates(two_model_gateway, tmp_path):
    source, out = tmp_path / "big.jsonl", tmp_path / "vectors.jsonl"
    ids = big_corpus(source, copies=5)
    args = ["--input", str(source), "--output", str(out), "--url", two_model_gateway.url + "/v1",
            "--model", INT8_MODEL, "--batch-size", "1", "--concurrency", "1", "--keep", "lang", "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "triton_embeddings.compare.reembed", *args], cwd=ROOT,
                            stderr=subprocess.PIPE)
    checkpoint = tmp_path / "vectors.jsonl.checkpoint"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if checkpoint.exists() and len(checkpoint.read_text().splitlines()) >= 11:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    # What counts as done is what was checkpointed: lines written after the last checkpoint (or torn by the
    # kill) are cut off on resume and embedded again.
    done = [i for line in checkpoint.read_text().splitlines()[1:] if line.endswith("}")
            for i in json.loads(line)["ids"]]
    assert 10 <= len(done) < len(ids)
    with out.open("a") as f:
        f.write('{"id": "torn-by-a-crash", "embed')  # a write the crash cut short
    assert main(args) == 0
    final = read_output(out)
    assert list(final)[:len(done)] == done and set(final) == set(ids)
    assert {r["lang"] for r in map(json.loads, out.read_text().splitlines())} == {"en"}


def test_interrupt_exits_130_and_resume_completes(two_model_gateway, tmp_path):
    source, out = tmp_path / "big.jsonl", tmp_path / "vectors.jsonl"
    ids = big_corpus(source, copies=5)
    args = ["--input", str(source), "--output", str(out), "--url", two_model_gateway.url + "/v1",
            "--model", DEFAULT_MODEL, "--batch-size", "2", "--concurrency", "2", "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "triton_embeddings.compare.reembed", *args], cwd=ROOT,
                            stderr=subprocess.PIPE)
    checkpoint = tmp_path / "vectors.jsonl.checkpoint"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (checkpoint.exists() and len(checkpoint.read_text().splitlines()) > 3):
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 130, proc.stderr.read().decode()
    assert "resume" in proc.stderr.read().decode()
    assert 0 < len(read_output(out)) < len(ids)
    assert main(args) == 0
    assert set(read_output(out)) == set(ids)


def test_resume_with_another_model_is_refused(two_model_gateway, tmp_path, capsys):
    out = tmp_path / "vectors.jsonl"
    base = ["--input", str(DATA / "queries.jsonl"), "--output", str(out), "--url", two_model_gateway.url + "/v1",
            "--no-progress"]
    assert main([*base, "--model", DEFAULT_MODEL]) == 0
    before = out.read_bytes()
    assert main([*base, "--model", INT8_MODEL]) == 2
    assert "another job" in capsys.readouterr().err and out.read_bytes() == before
    (tmp_path / "vectors.jsonl.checkpoint").unlink()
    assert main([*base, "--model", INT8_MODEL]) == 2, "an output without its checkpoint is not overwritten"


def test_endpoint_failure_keeps_progress(tmp_path, capsys):
    from tests.gw_helpers import free_port

    out = tmp_path / "v.jsonl"
    code = main(["--input", str(DATA / "queries.jsonl"), "--output", str(out), "--url",
                 f"http://127.0.0.1:{free_port()}/v1", "--model", "m", "--max-retries", "0", "--no-progress"])
    assert code == 1 and "run the same command again" in capsys.readouterr().err
    assert out.exists() and (tmp_path / "v.jsonl.checkpoint").exists()
