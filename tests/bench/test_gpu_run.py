"""`bench/gpu/run.py --quick` (the GPU run's CPU mode, what CI runs of it) and the pieces of its bundle.

The quick run is the GPU run's code on the CPU: the facts checked, a random model built and exported, the GPU
engine's fidelity and raw ceiling, Triton serving through the engine's CPU fallback (`engine: torch`), the
gateway and the seed-style server under single-text and batch loads. No figure is asserted (a shared machine's
quick figures mean nothing): every path answered, without errors, with the same vectors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench" / "gpu"))

import facts  # noqa: E402
import pack  # noqa: E402
import unpack  # noqa: E402


@pytest.mark.slow
def test_quick_gpu_run_measures_every_path(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "bench/gpu/run.py", "--quick", "--out", str(out), "--bundle",
                           str(tmp_path / "no-bundle")], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    run = json.loads((out / "gpu_run.json").read_text())
    assert run["provenance"]["tool"] == "bench/gpu/run.py" and "error" not in run
    # every fact of the issue checked and reported, whether it holds here or not
    assert len(run["facts"]) >= 25 and all(isinstance(f["holds"], bool) for f in run["facts"])
    assert sum(line.startswith(("PASS", "FAIL"), 11) for line in proc.stdout.splitlines()) == len(run["facts"])
    assert [e["rc"] for e in run["exports"]] == [0]
    assert all(f["passed"] and f["device"] == "cpu" for f in run["fidelity"]) and len(run["fidelity"]) == 2
    agree = run["served_vs_raw_min_cosine"]
    assert agree["gateway tiny"] >= 0.9999 and agree["seed tiny"] >= 0.9999  # the engine's vectors, served
    assert "failures" not in run and "skipped" not in run
    got = {(r["path"], r["load"], r["tokens"]) for r in run["results"]}
    assert got == {("raw", "batch", 16), ("raw", "batch", 64), *((p, load, 16) for p in ("gateway", "seed")
                                                                   for load in ("single", "batch"))}
    for r in run["results"]:
        assert r["texts_per_s"] > 0 and r["errors"] == 0, r
        assert r["tokens_per_s"] == pytest.approx(r["texts_per_s"] * r["tokens"])
    encoder_cpu = [r["cores"].get("encoder", 0) for r in run["results"] if r["path"] == "gateway"]
    assert max(encoder_cpu) > 0  # per-process CPU: the encoder's stub worked in the window
    assert "| tiny | 16 | batch | gateway |" in proc.stdout
    logs = (out / "logs.txt").read_text()
    assert all(f"===== {name}.log" in logs for name in ("triton", "gateway", "seed"))


def test_the_triton_closure_takes_what_the_server_needs_and_no_more():
    members = {name.split("/")[-1] for _, name in pack.triton_members()}
    server = {"tritonserver", "libtriton_python.so", "triton_python_backend_stub", "triton_python_backend_utils.py"}
    assert server <= members
    libs = {m.split("-")[0] for m in members if m.startswith("lib") and ".so" in m}
    assert {"libtritonserver", "libcudart", "libarchive", "libxml2"} <= libs
    assert not any(m.startswith("libpython3") for m in members)  # the 3.13 stub's; the machine has its own
    assert any(name.endswith("python_backend_stubs/3.12/triton_python_backend_stub")
               for _, name in pack.triton_members())


def _wheel(path: Path, module: str) -> Path:
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr(f"{module}/__init__.py", "VALUE = 42\n")
        whl.writestr(f"{module}-1.0.dist-info/METADATA", "Name: x\n")
    return path


def test_unpack_extracts_only_what_the_python_lacks(tmp_path, monkeypatch):
    bundle = tmp_path / "bundle"
    (bundle / "wheels").mkdir(parents=True)
    wheels = [_wheel(bundle / "wheels" / "gpu_run_missing_pkg-1.0-py3-none-any.whl", "gpu_run_missing_pkg"),
              _wheel(bundle / "wheels" / "pytest-1.0-py3-none-any.whl", "pytest_shadow")]  # pytest is installed
    manifest = {"wheels": {w.name: {"dist": facts.dist_of(w), "modules": pack.top_levels(w)} for w in wheels}}
    assert [m["modules"] for m in manifest["wheels"].values()] == [["gpu_run_missing_pkg"], ["pytest_shadow"]]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(sys, "path", list(sys.path))
    got = unpack.unpack(bundle, tmp_path / "work")
    assert got.extracted == ["gpu_run_missing_pkg-1.0-py3-none-any.whl"]
    assert not (got.site / "pytest_shadow").exists()
    import gpu_run_missing_pkg

    assert gpu_run_missing_pkg.VALUE == 42 and str(got.site) == sys.path[0]
    assert got.stub_site is None  # this venv's numpy is 1.x: the stub needs nothing
