"""`make chaos` in 2 minutes (what CI runs of it): MiniLM and a tiny reranker behind nginx, 2 gateways under
`embeddings-serve`, Redis; every fault of the cycle under load, then a batch job whose gateway is SIGKILLed and a
graceful stop. Nothing fails, nothing is wrong, nothing accepted is lost, every component answers within 5 s of
its restart."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tools import require

ROOT = Path(__file__).resolve().parents[2]
ORDER = ["stub", "tritonserver", "gateway-sigterm", "gateway-sigkill", "redis", "idle-connections", "burst"]
LAST = re.compile(r"chaos: (\d+) calls, (\d+) failed, (\d+) wrong, worst recovery ([\d.]+) s, RSS growth (-?[\d.]+)%")


@pytest.fixture(scope="module")
def chaos_run(tmp_path_factory):
    require("nginx")
    require("redis-server")
    out = tmp_path_factory.mktemp("chaos") / "chaos.json"
    cmd = [sys.executable, "bench/chaos.py", "--minutes", "2", "--interval", "15", "--no-mpnet",
           "--warmup-seconds", "10", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))
    (out.parent / "chaos.log").write_text(proc.stdout + proc.stderr)
    assert out.exists(), proc.stdout[-5000:] + proc.stderr[-5000:]
    return proc, json.loads(out.read_text())


@pytest.mark.slow
def test_the_last_line_says_what_the_run_measured(chaos_run):
    proc, doc = chaos_run
    last = proc.stdout.strip().splitlines()[-1]
    m = LAST.fullmatch(last)
    assert m, proc.stdout[-3000:]
    assert [int(m[1]), int(m[2]), int(m[3])] == [doc["calls"], doc["failed"], doc["wrong"]]
    assert float(m[4]) == round(doc["worst_recovery_s"], 1) and float(m[5]) == doc["rss_growth_pct"]
    assert doc["provenance"]["commit"] and doc["calls"] > 100


@pytest.mark.slow
def test_nothing_failed_or_was_wrong_under_every_fault(chaos_run):
    proc, doc = chaos_run
    assert doc["failed"] == 0 and doc["wrong"] == 0, "\n".join(doc["errors"]) + proc.stdout[-3000:]
    assert [f["fault"] for f in doc["faults"]][: len(ORDER)] == ORDER
    assert {"float", "base64", "token_ids", "dimensions", "rerank", "batch"} <= set(doc["by_kind"])
    assert doc["batch_jobs"]["jobs"] >= 1 and doc["batch_jobs"]["ok"] == doc["batch_jobs"]["jobs"]
    for when in ("between_faults", "during_faults"):
        assert doc["latency"][when]["calls"] > 0 and doc["latency"][when]["p99_ms"] > 0


@pytest.mark.slow
def test_each_component_answers_within_5_s_of_its_restart(chaos_run):
    _, doc = chaos_run
    restarted = [f for f in doc["faults"] if f["restarted"]]
    assert {f["fault"] for f in restarted} >= {"stub", "tritonserver", "gateway-sigterm", "gateway-sigkill", "redis"}
    late = [f for f in restarted if f["answering_after_restart_s"] > 5.0]
    assert not late, late
    assert all(f["recovery_s"] is not None for f in doc["faults"])


@pytest.mark.slow
def test_a_graceful_stop_and_a_killed_batch_runner_lose_nothing(chaos_run):
    proc, doc = chaos_run
    g, k = doc["graceful_stop"], doc["batch_sigkill"]
    assert g["lost"] == 0 and g["answered"] == g["requests"], g
    assert all(n > 0 for n in g["in_flight_per_gateway"]), g  # the stop met requests on both gateways
    assert g["serve_exit"] == 0, proc.stdout[-3000:]
    assert 0 < k["lines_written_before_kill"] < k["lines"], k  # killed mid-job
    assert k["ok"] and k["answered"] == k["lines"] and not (k["missing"] or k["duplicated"] or k["wrong"]), k


@pytest.mark.slow
def test_rss_is_measured_for_every_process(chaos_run):
    _, doc = chaos_run
    rss = doc["rss_mb"]
    expected = {"embeddings-serve", "tritonserver", "nginx", "redis-server", "gateway 0", "gateway 1",
                "gateway 0 worker 0", "gateway 0 worker 1", "gateway 1 worker 0", "gateway 1 worker 1"}
    assert expected <= set(rss), sorted(rss)
    stubs = [n for n in rss if n.startswith("stub ")]
    assert any("tiny-reranker" in n for n in stubs) and any("all-MiniLM-L6-v2" in n for n in stubs), stubs
    assert all(m["after_warmup"] > 0 and m["end"] > 0 for m in rss.values()), rss
