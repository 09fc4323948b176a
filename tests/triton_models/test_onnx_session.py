"""ONNX Runtime session settings of the served steps: threads shared out, memory handed back."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx

from triton_embeddings.export.pooler import build_pooler
from triton_embeddings.triton_models import onnx_session

ROOT = Path(__file__).resolve().parents[2]

# Runs in its own process: mallopt changes the whole process. Prints RSS growth in MB.
RAGGED_RUNS = textwrap.dedent("""
    import random, sys
    import numpy as np
    from triton_embeddings.triton_models import onnx_session as s

    def rss():
        return int(next(x for x in open("/proc/self/status") if x.startswith("VmRSS")).split()[1]) / 1024

    bounded = sys.argv[2] == "bounded"
    if bounded:
        s.return_large_blocks_to_the_os()
    sess = s.make_session(sys.argv[1], 1, ["CPUExecutionProvider"], ragged=bounded)
    options = s.shrinking_run_options() if bounded else None
    rng = random.Random(0)
    start = rss()
    for _ in range(40):
        b, n = rng.choice([8, 16, 32, 64]), rng.choice([16, 64, 128, 256])
        feed = {"TOKEN_EMBEDDINGS": np.ones((b, n, 384), np.float32), "ATTENTION_MASK": np.ones((b, n), np.int64)}
        sess.run(None, feed, options)
    print(rss() - start)
""")


def test_zero_threads_share_the_cores_out_between_instances():
    cores = os.cpu_count() or 1
    assert onnx_session.auto_threads(1) == cores
    assert onnx_session.auto_threads(2) == max(1, cores // 2)
    assert onnx_session.auto_threads(cores * 4) == 1


def test_served_sessions_skip_the_memory_pattern(tmp_path):
    path = tmp_path / "pooler.onnx"
    onnx.save(build_pooler("mean", True, 8), str(path))
    assert not onnx_session.make_session(str(path), 1, ragged=True).get_session_options().enable_mem_pattern
    assert onnx_session.make_session(str(path), 1).get_session_options().enable_mem_pattern


def _growth(model: Path, mode: str) -> float:
    proc = subprocess.run([sys.executable, "-c", RAGGED_RUNS, str(model), mode], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=True)
    return float(proc.stdout.strip())


# The largest batch RAGGED_RUNS feeds: 64 x 256 x 384 fp32 token embeddings.
LARGEST_FEED_MB = 64 * 256 * 384 * 4 / 2**20


def test_ragged_runs_hand_memory_back(tmp_path):
    """Batches of ever new shapes: with the served settings the process keeps less than one largest batch,
    with the defaults more than one more. The runs are seeded and single-threaded: the growth does not depend
    on timing or load, and the bounds leave room for other allocator and ONNX Runtime versions."""
    model = tmp_path / "pooler.onnx"
    onnx.save(build_pooler("mean", True, 384), str(model))
    default, bounded = _growth(model, "default"), _growth(model, "bounded")
    assert bounded < LARGEST_FEED_MB, f"RSS grew {bounded:.0f} MB with arena shrinkage and a fixed mmap threshold"
    assert default > bounded + LARGEST_FEED_MB, (
        f"default settings grew {default:.0f} MB, bounded {bounded:.0f} MB: the test no longer shows a difference")
