"""embeddings-reembed against the real gateway over the real Triton: a full run, a run killed mid-way and
resumed (with a torn last line), and refusals that protect an index from mixing models."""

from __future__ import annotations

import http.server
import json
import signal
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import openai
import pytest

from tests.compare.conftest import DATA, INT8_MODEL
from tests.conftest import DEFAULT_MODEL
from tests.gw_helpers import ROOT
from triton_embeddings.compare.reembed import main

pytestmark = pytest.mark.slow
# Only catches a hang: a job started on a starved CPU can take over a minute just to import its modules.
HANG_S = 300


def read_output(path) -> dict[str, list[float]]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    ids = [r["id"] for r in lines]
    assert len(ids) == len(set(ids)), "an id was written twice"
    return {r["id"]: r["embedding"] for r in lines}


def big_corpus(path, copies: int) -> list[str]:
    """The test corpus repeated under fresh ids, each record with a `lang` field."""
    records = [json.loads(line) for line in (DATA / "corpus.jsonl").read_text().splitlines()]
    ids = []
    with path.open("w") as f:
        for c in range(copies):
            for r in records:
                ids.append(f"{r['_id']}-{c}")
                f.write(json.dumps({"_id": ids[-1], "text": r["text"], "lang": "en"}) + "\n")
    return ids


class HeldProxy:
    """A pass-through to the gateway that answers the first `passed` requests, then holds every further one
    until `release()`: a job run through it is still mid-way whenever the test stops it, however late the
    test itself gets the CPU (a job left to run freely can finish first on a loaded machine)."""

    def __init__(self, target: str, passed: int):
        self.target, self.passed, self.seen, self.open = target, passed, 0, False
        self.cond = threading.Condition()
        self.http = httpx.Client(base_url=target, timeout=60)
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                proxy._wait_turn()
                r = proxy.http.post(self.path, content=body, headers={"content-type": "application/json"})
                try:
                    self.send_response(r.status_code)
                    self.send_header("content-type", r.headers.get("content-type", "application/json"))
                    self.send_header("content-length", str(len(r.content)))
                    self.end_headers()
                    self.wfile.write(r.content)
                except OSError:
                    pass  # the job was killed while this request was held

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def _wait_turn(self) -> None:
        with self.cond:
            self.seen += 1
            n = self.seen
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.open or n <= self.passed)

    def wait_held(self, count: int, proc: subprocess.Popen) -> None:
        """Until `count` requests are held (the job has written all it can); fails if the job ends or hangs."""
        deadline = time.monotonic() + HANG_S
        with self.cond:
            while self.seen - self.passed < count:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline, "the job never reached the held requests"
                self.cond.wait(0.1)

    def release(self) -> None:
        with self.cond:
            self.open = True
            self.cond.notify_all()

    def __enter__(self) -> HeldProxy:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()
        self.http.close()


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


def reembed_args(source, out, url: str, model: str, batch: int, concurrency: int) -> list[str]:
    return ["--input", str(source), "--output", str(out), "--url", url + "/v1", "--model", model, "--batch-size",
            str(batch), "--concurrency", str(concurrency), "--keep", "lang", "--no-progress"]


def start_reembed(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "triton_embeddings.compare.reembed", *args], cwd=ROOT,
                            stderr=subprocess.PIPE)


def test_killed_run_resumes_without_gaps_or_duplicates(two_model_gateway, tmp_path):
    source, out = tmp_path / "big.jsonl", tmp_path / "vectors.jsonl"
    ids = big_corpus(source, copies=1)
    checkpoint = tmp_path / "vectors.jsonl.checkpoint"
    # The kill lands anywhere from the 10th written batch on (mid-write included), by the 40th at the latest:
    # further requests are held, so the job cannot finish before it.
    with HeldProxy(two_model_gateway.url, passed=40) as proxy:
        args = reembed_args(source, out, proxy.url, INT8_MODEL, batch=1, concurrency=1)
        proc = start_reembed(args)
        deadline = time.monotonic() + HANG_S
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
        assert 10 <= len(done) <= 40
        with out.open("a") as f:
            f.write('{"id": "torn-by-a-crash", "embed')  # a write the crash cut short
        proxy.release()
        assert main(args) == 0
    final = read_output(out)
    assert list(final)[:len(done)] == done and set(final) == set(ids)
    assert {r["lang"] for r in map(json.loads, out.read_text().splitlines())} == {"en"}


def test_interrupt_exits_130_and_resume_completes(two_model_gateway, tmp_path):
    source, out = tmp_path / "big.jsonl", tmp_path / "vectors.jsonl"
    ids = big_corpus(source, copies=1)
    with HeldProxy(two_model_gateway.url, passed=4) as proxy:
        args = reembed_args(source, out, proxy.url, DEFAULT_MODEL, batch=2, concurrency=2)
        proc = start_reembed(args)
        # Both requests in flight are held: 4 batches are written and checkpointed, nothing more can be.
        proxy.wait_held(2, proc)
        proc.send_signal(signal.SIGINT)
        proxy.release()  # the held requests complete; an interrupted job writes none of them
        assert proc.wait(HANG_S) == 130, proc.stderr.read().decode()
        assert "resume" in proc.stderr.read().decode()
        partial = read_output(out)
        checkpointed = [i for line in (tmp_path / "vectors.jsonl.checkpoint").read_text().splitlines()[1:]
                        for i in json.loads(line)["ids"]]
        assert list(partial) == checkpointed and len(partial) == 8, "an interrupt leaves exactly what it confirmed"
        assert main(args) == 0
    final = read_output(out)
    assert list(final)[:8] == checkpointed and set(final) == set(ids)


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
