"""The production image (NGC tritonserver 24.10) runs ONNX Runtime 1.19: every exported encoder and pooler
(fp32, fp16, int8) must load and run there and agree with the ONNX Runtime this project exports with.

The 1.19.2 wheel lives in its own venv (`.venv-ort119`, made on first use from PyPI and kept)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.tools import unavailable

ROOT = Path(__file__).resolve().parents[2]
NGC_2410_ORT = "1.19.2"
VENV = ROOT / ".venv-ort119"
PINS = [f"onnxruntime=={NGC_2410_ORT}", "numpy==1.26.4"]  # 1.19's wheels predate numpy 2
RUNNER = Path(__file__).with_name("ort_runner.py")
# Largest |difference| allowed between the two runtimes, by precision (relative to the output's scale).
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "int8": 2e-2}


def _venv_python() -> Path:
    python = VENV / "bin" / "python"
    probe = [str(python), "-c", "import onnxruntime, sys; sys.stdout.write(onnxruntime.__version__)"]
    if python.exists() and subprocess.run(probe, capture_output=True, text=True).stdout == NGC_2410_ORT:
        return python
    made = subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], capture_output=True, text=True)
    pip = subprocess.run([str(python), "-m", "pip", "install", "-q", *PINS], capture_output=True, text=True) \
        if made.returncode == 0 else made
    if pip.returncode != 0:
        unavailable(f"could not make {VENV.name} with {' '.join(PINS)}",
                    f"pip needs PyPI ({pip.stderr.strip().splitlines()[-1:]})")
    return python


@pytest.fixture(scope="session")
def ort119() -> Path:
    return _venv_python()


def _feeds(model: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Inputs for any of our encoders or poolers: token ids, a ragged mask, float activations."""
    batch, seq = 3, 17
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    mask = np.ones((batch, seq), dtype=np.int64)
    mask[1, 9:] = 0
    mask[2, 4:] = 0
    feeds = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) else (batch if n == 0 else seq) for n, d in enumerate(i.shape)]
        if "mask" in i.name.lower():
            value = mask
        elif "type" in i.name.lower():  # token type ids: one segment
            value = np.zeros(shape)
        elif i.type == "tensor(int64)":
            value = rng.integers(1000, 5000, size=shape) * mask if shape == [batch, seq] else \
                rng.integers(1000, 5000, size=shape)
        else:
            value = rng.standard_normal(shape)
        feeds[i.name] = value.astype({"tensor(int64)": np.int64, "tensor(int32)": np.int32,
                                      "tensor(float)": np.float32, "tensor(float16)": np.float16}[i.type])
    return feeds


def _models(repos: dict[str, Path]) -> dict[str, Path]:
    found = {f"{precision}-{step.parent.parent.name}": step
             for precision, repo in repos.items()
             for step in sorted(repo.glob("*_*/1/model.onnx"))
             if step.parent.parent.name.rsplit("_", 1)[1] in ("encoder", "pooler")}
    assert {k.split("-")[0] for k in found} == set(repos) and len(found) == 2 * len(repos), found
    return found


def test_every_export_runs_on_ngc_2410_onnxruntime(ort119, model_repository, fp16_repository, int8_repository,
                                                   tmp_path):
    models = _models({"fp32": model_repository, "fp16": fp16_repository.repo, "int8": int8_repository.repo})
    rng = np.random.default_rng(0)
    expected = {}
    for name, model in models.items():
        feeds = _feeds(model, rng)
        np.savez(tmp_path / f"{name}.in.npz", **feeds)
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        expected[name] = session.run(None, feeds)
    (tmp_path / "jobs.json").write_text(json.dumps({k: str(v) for k, v in models.items()}))
    run = subprocess.run([str(ort119), str(RUNNER), str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"ONNX Runtime {NGC_2410_ORT} could not run an export:\n{run.stderr[-3000:]}"
    assert run.stdout.strip() == NGC_2410_ORT
    for name, want in expected.items():
        got = list(np.load(tmp_path / f"{name}.out.npz").values())
        assert len(got) == len(want), name
        for g, w in zip(got, want):
            g, w = g.astype(np.float64), w.astype(np.float64)
            scale = max(1.0, float(np.abs(w).max()))
            worst = float(np.abs(g - w).max()) / scale
            assert worst <= TOLERANCE[name.split("-")[0]], f"{name}: ORT {NGC_2410_ORT} differs by {worst:.2e}"
    print(f"ORT {NGC_2410_ORT} vs {ort.__version__}: {sorted(models)} agree")


def test_runner_reports_a_model_the_old_runtime_cannot_load(ort119, tmp_path):
    """An export using an opset newer than 1.19 knows must fail here, not on a customer's GPU."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=11)
    onnx.save(model, tmp_path / "new.onnx")
    np.savez(tmp_path / "new.in.npz", x=np.array([1.0, -1.0], dtype=np.float32))
    (tmp_path / "jobs.json").write_text(json.dumps({"new": str(tmp_path / "new.onnx")}))
    run = subprocess.run([str(ort119), str(RUNNER), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "onnxruntime" in run.stderr.lower()
