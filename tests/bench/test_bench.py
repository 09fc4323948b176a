"""`bench/bench.py --quick` (what CI runs of the benchmark): every path answers, no errors, a full table.

No timing is asserted: the figures of a quick run on a shared machine mean nothing; the bench's job here
is to prove it still drives raw ONNX Runtime, Triton, the gateway, the reference server and int8.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tools import require

ROOT = Path(__file__).resolve().parents[2]
LOADS = ("S32", "B32", "L32", "M32")


@pytest.mark.slow
def test_quick_bench_prints_a_full_table_without_errors(model_repository, tmp_path):
    require("wrk")
    out_json = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "bench/bench.py", "--quick", "--repository", str(model_repository), "--json", str(out_json)],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    throughput = proc.stdout.split("Triton per-model metrics")[0]
    rows = [line.split() for line in throughput.splitlines() if line.split()[:1] and line.split()[0] in LOADS]
    table = {(r[0], r[1]): r for r in rows}
    for load in LOADS:
        for path in ("raw", "triton", "gateway", "gateway-ensemble", "reference"):
            assert (load, path) in table, f"no {load} {path} row in:\n{proc.stdout}"
    for load in ("S32", "L32"):
        assert (load, "gateway-int8") in {(r[0], r[1]) for r in rows}
    assert "gateway / raw, S32:" in proc.stdout and "p50, 1 client x 1 short text" in proc.stdout
    assert "direct path / ensemble, S32:" in proc.stdout and "raw, S32: the better of" in proc.stdout
    assert "int8 / fp32, S32: through the gateway" in proc.stdout
    doc = json.loads(out_json.read_text())
    assert doc["provenance"]["commit"] and doc["provenance"]["machine"]["cores"] and doc["provenance"]["date"]
    s32 = doc["summary"]["throughput"]["S32"]
    assert s32["gateway"]["x_raw"] == round(s32["gateway"]["texts_per_s"] / s32["raw"]["texts_per_s"], 2)
    runs = doc["rounds"][0]
    assert runs and all(run["errors"] == 0 for run in runs.values())
    served = [run for key, run in runs.items() if not key.split("/")[1].startswith("raw")]
    assert all(run["texts_per_s"] > 0 for run in served), runs


@pytest.mark.slow
def test_quick_near_free_bench_measures_the_serving_path_and_the_workers(tmp_path):
    """The named near-free model (built here, 1 layer, hidden 32): the direct path, the ensemble, 2 workers, and
    the ceiling's two ways, side by side."""
    require("wrk")
    out_json = tmp_path / "near_free.json"
    proc = subprocess.run(
        [sys.executable, "bench/bench.py", "--quick", "--model", "near-free", "--no-reference", "--loads", "S32",
         "--json", str(out_json)],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for line in ("gateway / raw, S32:", "(goal >= 0.25)", "2 gateway workers / 1, S32:", "direct path / ensemble",
                 "the encoder step alone over gRPC"):
        assert line in proc.stdout, proc.stdout
    summary = json.loads(out_json.read_text())["summary"]
    assert summary["p50_one_short_text_ms"]["encoder-hop"] > 0  # the direct route was found and timed
    cells = summary["throughput"]["S32"]
    assert set(cells["raw"]["ways"]) == {"1 session x all cores", "1 process x 1 thread per core"}
    assert cells["raw"]["texts_per_s"] == max(cells["raw"]["ways"].values())  # one round: its better way
    assert all(cells[p]["texts_per_s"] > 0 and cells[p]["errors"] == 0
               for p in ("triton", "gateway", "gateway-ensemble", "gateway-w2"))
    assert cells["gateway-w2"]["cores"]["gateway-w2"] > 0  # the workers' CPU is counted, not the parent's alone


@pytest.mark.slow
def test_quick_rerank_bench_prints_every_path_without_errors(tmp_path):
    require("wrk")
    out_json = tmp_path / "rerank.json"
    proc = subprocess.run(
        [sys.executable, "bench/bench_rerank.py", "--quick", "--int8", "--json", str(out_json)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "errors 0" in proc.stdout, proc.stdout
    rows = {line.split()[0]: float(line.split()[1]) for line in proc.stdout.splitlines()
            if "pairs/s" in line and not line.startswith("round")}
    paths = {"in-process", "gateway", "reference", "in-process-int8", "gateway-int8"}
    assert set(rows) == paths and all(v > 0 for v in rows.values()), proc.stdout
    assert "gateway / reference" in proc.stdout and "gateway-int8 / in-process-int8" in proc.stdout
    doc = json.loads(out_json.read_text())
    assert doc["provenance"]["commit"] and doc["provenance"]["machine"]["cores"]
    assert set(doc["summary"]["paths"]) == paths
    assert doc["summary"]["ratios"]["gateway / in-process"] == round(
        doc["summary"]["paths"]["gateway"]["pairs_per_s"] / doc["summary"]["paths"]["in-process"]["pairs_per_s"], 2)


def test_slow_loads_get_windows_long_enough_for_littles_law():
    """At mpnet's L32 rate (~3 texts/s, 32 clients) a 10 s run completes < 4 requests per client; the
    window grows to ~5 requests each at the raw rate. MiniLM's rates keep --seconds."""
    from bench import bench

    l32 = next(load for load in bench.LOADS if load.name == "L32")
    run = lambda rate: bench.Run(rate, 0.0, 0.0, 0, {})  # noqa: E731
    assert bench.window(10.0, l32, run(2.8)) == round(5 * 32 / 2.8)
    assert bench.window(10.0, l32, run(22.0)) == 10.0
    assert bench.window(10.0, l32, None) == 10.0
